//! Integration tests for `mta-sts-agent`, built as one test binary (`it`).
//!
//! `support` holds the test fixtures (a test CA, an authoritative DNS server
//! and HTTPS policy hosts, all on loopback); `support_selftest` proves them.

mod support;
mod support_selftest;
