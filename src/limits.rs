//! Size limits that the configuration check and the relay share: the RFC
//! 5321 sizes of paths and domains, and how much the spool stores per
//! message. Pure numbers, below `config` in the layering, so that
//! `Config::validate` can refuse a `relay.max_recipients` whose messages
//! could not be read back after a restart without importing the relay.
//!
//! A limit that differed between the spool's writer and its reader would
//! let an acknowledged message become unloadable after a restart, so every
//! limit here is a single constant used on both sides.

/// RFC 5321 §4.5.3.1.1.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3: counts the angle brackets too.
pub const MAX_PATH: usize = 256;

/// Longest envelope line, written or read back.
pub const MAX_ENVELOPE: usize = 1024 * 1024;
/// Longest state file, written or read back.
pub const MAX_STATE: usize = 4 * 1024 * 1024;
/// Longest text kept per field of a recipient's state (remote reply, our
/// reason, MX name, status code): what a DSN's Diagnostic-Code needs, not
/// the up to 100 lines of 1000 octets a remote server may send.
pub const MAX_SUMMARY: usize = 300;

/// Room for the envelope's fixed part: keys, id, arrival, flags, the
/// sender (a path of at most `MAX_PATH` octets) and the client string
/// (address plus an EHLO name from a command line of at most
/// `MAX_COMMAND_LINE` octets), each JSON-escaped at worst.
pub(crate) const ENVELOPE_FIXED: usize = 8 * 1024;
/// One recipient in the envelope at worst: every octet escaped (`"` and
/// `\` double; control characters never pass the RCPT parser), two quotes
/// and a comma, plus `{}` and a comma in `rcpt_params`.
const ENVELOPE_PER_RCPT: usize = 2 * MAX_PATH + 3 + 3;
/// A JSON string of at most `n` octets after [`summary`]: no control
/// characters are left, so each octet is at most two.
pub(crate) const fn encoded(n: usize) -> usize {
    2 * n + 2
}
/// One recipient's state at worst: status and keys, four summaries, the
/// `relayed` flag, and its domain's schedule entry (a domain of at most 255
/// octets, lowercased when it is not a valid name, which may grow it by
/// half).
const STATE_PER_RCPT: usize = 96 + 4 * encoded(MAX_SUMMARY) + 16 + encoded(3 * MAX_DOMAIN / 2) + 64;
/// Keys and brackets of the state file, the `delay_warned` flag included.
const STATE_FIXED: usize = 96;

/// The most recipients one message can have and still have its envelope
/// and its state read back whatever its addresses and replies are.
/// `relay.max_recipients` may not exceed it.
pub const MAX_STORABLE_RECIPIENTS: usize = {
    let by_envelope = (MAX_ENVELOPE - ENVELOPE_FIXED) / ENVELOPE_PER_RCPT;
    let by_state = (MAX_STATE - STATE_FIXED) / STATE_PER_RCPT;
    if by_envelope < by_state {
        by_envelope
    } else {
        by_state
    }
};
