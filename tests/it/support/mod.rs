//! Test fixtures shared by the integration tests.
//!
//! * [`ca`]: a throw-away certificate authority made at test time.
//! * [`dns`]: an authoritative DNS server on loopback (UDP and TCP, same port).
//! * [`https`]: HTTPS "policy hosts" serving `/.well-known/mta-sts.txt` for many
//!   virtual hosts on one loopback port, choosing the certificate by SNI.
//! * [`postfix`]: every Postfix version the machine has (system, Debian roots).
//! * [`smtp`]: SMTP servers (STARTTLS with good or broken certificates) on
//!   127.0.0.x, for probes and relays.
//! * [`tmpfs`]: a small file system of the test's own, for full-disk and
//!   read-only faults.
//!
//! Not every test uses every fixture method, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod ca;
pub mod dns;
pub mod dnssec;
pub mod https;
pub mod post_sink;
pub mod postfix;
pub mod proxy;
pub mod redis;
pub mod smtp;
pub mod tmpfs;

/// Installs rustls' `ring` crypto provider as the process default.
///
/// Safe to call any number of times from any test: the "already installed"
/// error is ignored.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
