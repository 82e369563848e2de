//! Integration tests for `mta-sts-agent`, built as one test binary (`it`).
//!
//! `support` holds the test fixtures (a test CA, an authoritative DNS server
//! and HTTPS policy hosts, all on loopback); `support_selftest` proves them.
//! `harness` points the agent's configuration at those fixtures.

mod harness;
mod hostile;
mod support;
mod support_selftest;

mod admin;
mod bench;
mod check;
mod daemon;
mod dane;
mod dane_attacker;
mod dane_background;
mod dane_coalesce;
mod discovery;
mod durability;
mod exact_mx;
mod fetch;
mod fleet;
mod fleet_auth;
mod fleet_trust;
mod layering;
mod limits;
mod packaging;
mod postfix_e2e;
mod postfix_relay;
mod postfix_style;
mod postfix_tlsrpt;
mod postmap;
mod privdrop;
mod proxy;
mod relay;
mod relay_crash;
mod relay_dsn;
mod relay_requiretls;
mod relay_reuse;
mod relay_session;
mod relay_tlsrpt;
mod resolver;
mod rfc_conformance;
mod setup_postfix;
mod socketmap;
mod store_faults;
mod tlsrpt_state;
