//! Measuring tools shipped with the agent: a socketmap load generator and a
//! constant-reply server that marks the ceiling any socketmap server can
//! reach on the machine. `contrib/bench/compare.sh` drives them.

pub mod loadgen;
pub mod null_server;
