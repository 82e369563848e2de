//! The Postfix policy face: a socketmap server (Postfix `socketmap_table(5)`)
//! for `smtp_tls_policy_maps`.
//!
//! - `netstring`: the wire framing, pure.
//! - `reply`: what Postfix is told for each answer of the resolver, pure.
//! - `postfix_version`: which reply style the asking Postfix understands.
//! - `connection`: one client connection, its limits and timeouts.
//! - `server`: listeners (TCP v4/v6, unix), the connection cap, shutdown.

pub mod connection;
pub mod netstring;
pub mod postfix_version;
pub mod reply;
pub mod server;

pub use server::{bind, serve, Listeners};

/// Postfix's `dict_sockmap.c` refuses to send a request longer than this.
pub const MAX_REQUEST: usize = 10_000;
/// …and refuses a reply longer than this.
pub const MAX_REPLY: usize = 100_000;
