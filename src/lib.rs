//! mta-sts-agent: makes mail servers keep the promise a receiving domain
//! publishes with MTA-STS (RFC 8461).
//!
//! Data flows one way: [`policy`] (pure RFC rules) → [`dns`], [`fetch`]
//! (bounded I/O) → [`store`] (memory over a persistent store) → [`resolver`]
//! (the only home of the caching rules) → the faces: [`socketmap`] (Postfix),
//! [`relay`] (the smart host), [`check`] (the `mta-sts-check` diagnosis, probing with [`smtp`] and
//! [`tlsprobe`]).

pub mod check;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dane;
pub mod dns;
pub mod fetch;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod process;
pub mod relay;
pub mod resolver;
pub mod setup;
pub mod smtp;
pub mod socketmap;
pub mod store;
pub mod sync;
pub mod tlsprobe;
