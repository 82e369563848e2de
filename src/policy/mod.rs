//! RFC 8461 rules that need no I/O: the `_mta-sts` TXT record (§3.1), the policy
//! document (§3.2) and MX host matching (§4.1); also the TLS-RPT record
//! (RFC 8460 §3) that tells senders where to report failures.
//!
//! Everything here is a pure function of its input, so every face (socketmap,
//! relay, check) shares one reading of the RFC and the rules are testable
//! without sockets.

pub mod document;
pub mod domain;
pub mod mx;
pub mod tlsrpt;
mod tlsrpt_types;
pub mod txt;

pub use document::{parse_policy, Mode, ParsedPolicy, Policy, PolicyError, PolicyErrorKind};
pub use domain::{normalize_domain, DomainError};
pub use mx::{MxHosts, MxPattern, MxPatternError};
pub use tlsrpt_types::{PolicyType, ResultType};
pub use txt::{discover, parse_record, Discovery, StsRecord, TxtError};

/// RFC 8461 §3.2: "maximum value of 31557600" (one year).
pub const MAX_AGE_LIMIT: u32 = 31_557_600;

/// RFC 8461 §3.3: "senders SHOULD impose a limit on the maximum size of the
/// response body" — 64 KiB, the figure the RFC suggests.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
