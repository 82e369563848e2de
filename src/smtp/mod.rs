//! The SMTP client side: bounded reply parsing ([`reply`]), a connection
//! that speaks commands and replies with a timeout on every step
//! ([`client`]), and the diagnostic probe of an MX host ([`probe`]: banner,
//! EHLO, STARTTLS, TLS details) used by `mta-sts-check`.
//!
//! Limits: a reply line is at most [`reply::MAX_LINE`] bytes and a reply at
//! most [`reply::MAX_LINES`] lines; anything longer is an error, never a
//! growing buffer.
//!
//! The message body, both ways, is pure wire format: [`data`] reads DATA
//! for the relay's server side, [`dotstuff`] writes it for deliveries; one
//! line-ending rule for both, so nothing can end a message early.
//! [`mime`] lays out the multipart reports the relay writes (bounces,
//! TLS-RPT mails), with a boundary no part contains; [`date`] writes the
//! dates in them. [`status`] names the enhanced status codes (RFC 3463)
//! the relay answers and reports with.

pub mod client;
pub mod data;
pub mod date;
pub mod dotstuff;
pub mod headers;
pub mod mime;
pub mod probe;
pub mod reply;
pub mod status;
pub mod xtext;

pub use client::{Ehlo, SmtpConn, SmtpError, StartTls};
pub use probe::{probe, ProbeStage, SmtpProbeConfig, SmtpProbeReport};
pub use reply::{Reply, ReplyError};
