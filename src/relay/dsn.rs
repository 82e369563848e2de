//! Non-delivery reports (bounces) for messages the relay has given up on.
//!
//! When recipients fail permanently, or the queue lifetime runs out, the
//! sender gets a `multipart/report; report-type=delivery-status` message
//! (RFC 6522, which obsoletes RFC 3462) carrying a human-readable
//! explanation, a machine-readable `message/delivery-status` part (RFC 3464)
//! and the original header section as `text/rfc822-headers`, or the whole
//! message as `message/rfc822` when the sender asked for it (RFC 3461
//! `RET=FULL`, never for REQUIRETLS mail) and it is small enough. Headers
//! only is the default: it keeps the bounce small and avoids reflecting
//! arbitrary content to a possibly forged sender.
//!
//! Everything that came from outside (addresses, remote replies, the original
//! headers) is treated as hostile: control characters are removed so nothing
//! can start a header field of its own, and every line is kept within the
//! 998-octet limit of RFC 5322 §2.1.1 / RFC 5321 §4.5.3.1.6.
//!
//! The output uses UTF-8 only where the input already needed SMTPUTF8 or
//! 8BITMIME (a non-ASCII sender, recipient, reason or original header); the
//! top-level `Content-Transfer-Encoding` then says `8bit` so the queue can
//! tell.  The `message/delivery-status` part itself is always 7-bit ASCII.
//!
//! The multipart layout and the boundary that no part can contain come
//! from [`crate::smtp::mime`], which the mailed TLS-RPT reports share; this
//! module writes what goes inside the parts and the top-level fields.

use crate::smtp::date;
use crate::smtp::mime::{Multipart, Part};
use crate::smtp::status::{is_status_code, EXPIRED, OK, PERM_OTHER};

/// One recipient the message could not be delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The envelope recipient as received.
    pub address: String,
    /// Enhanced status code such as "5.1.1"; callers fall back to e.g.
    /// "5.0.0" or "4.4.7" when the remote reply carried none.
    pub status: String,
    /// MX host name that gave the reply, if any.
    pub remote_mta: Option<String>,
    /// The remote reply on one line, e.g. "550 5.1.1 no such user".
    pub diagnostic: Option<String>,
    /// Our one-line human explanation.
    pub reason: String,
    /// `ORCPT=` as given (RFC 3461 §4.2): address type and the decoded
    /// address, reported as `Original-Recipient` (RFC 3464 §2.3.1).
    pub orcpt: Option<(String, String)>,
    /// Not a failure: delivered to a next hop without DSN, reported as
    /// `relayed` with status 2.0.0 (RFC 3461 §6.2.6.2 item c).
    pub relayed: bool,
}

/// Which report this is (RFC 3464 §2.3.3 Action, the same for every
/// recipient of one report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Given up: `failed`.
    Failure,
    /// Still being retried (NOTIFY=DELAY): `delayed`, with the unix second
    /// the queue gives up at.
    Delay { until: u64 },
    /// Given to a next hop that does not offer DSN while NOTIFY=SUCCESS
    /// was asked for: `relayed` (RFC 3461 §6.2.6.2 item c).
    Relayed,
}

/// Everything needed to write one bounce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounce<'a> {
    /// Our host name.
    pub reporting_mta: &'a str,
    pub queue_id: &'a str,
    /// Envelope sender the DSN goes to (never empty: bounces are not bounced).
    pub sender: &'a str,
    /// Unix seconds the message arrived.
    pub arrival: u64,
    /// Unix seconds, for `Date:`, `Message-ID:` and `Last-Attempt-Date:`.
    pub now: u64,
    pub recipients: &'a [FailedRecipient],
    /// The original message as spooled (CRLF lines).
    pub original: &'a [u8],
    /// True when the queue lifetime ran out.
    pub expired: bool,
    pub notice: Notice,
    /// `ENVID=` of the message (RFC 3464 §2.2.1 Original-Envelope-Id).
    pub envid: Option<&'a str>,
    /// `RET=FULL` on a failure report: the whole message goes back as
    /// `message/rfc822` when it is at most [`FULL_CAP`] octets with every
    /// line within the RFC 5322 limit; otherwise, like `RET=HDRS` and
    /// like every delay or relayed report, its header section only.
    pub full: bool,
}

/// Largest original returned whole for `RET=FULL`; above it the headers
/// go back alone, so that a bounce cannot itself become undeliverable.
pub const FULL_CAP: usize = 1024 * 1024;

// RFC 5322 §2.1.1: hard limit, excluding CRLF.
const MAX_LINE: usize = 998;
// RFC 5322 §2.1.1: the SHOULD limit; we fold and wrap there for readability.
const FOLD_AT: usize = 78;
// Human text wraps a little earlier so quoting mail readers keep it intact.
const WRAP_AT: usize = 76;
// The returned header section is bounded so a huge header block cannot make
// the bounce itself undeliverable.
const HEADERS_CAP: usize = 64 * 1024;
// Remote replies are attacker-sized; a few KiB is plenty for a diagnosis.
const MAX_TEXT: usize = 4096;
// RFC 5321 §4.5.3.1.3 caps a path at 256 octets; anything far beyond that is
// not a real address, so twice the limit is generous and keeps fields short.
const MAX_ADDRESS: usize = 512;
// Encoded addresses must stay one unfoldable word on a line (see `typed_address`).
const MAX_ENCODED_ADDRESS: usize = 900;
// RFC 1035 §2.3.4: a domain name is at most 253 octets in text form.
const MAX_HOST: usize = 253;
// Keeps the boundary within the 70 characters RFC 2046 §5.1.1 allows, even
// with a de-collision suffix appended.
const MAX_BOUNDARY_ID: usize = 32;

/// The complete DSN message (RFC 5322 headers + MIME body), CRLF line
/// endings, every line ≤ 998 octets, ready to be queued with the null
/// reverse-path `<>`.
#[must_use]
pub fn build(b: &Bounce<'_>) -> Vec<u8> {
    let host = host_name(b.reporting_mta);
    let qid = token(b.queue_id, 64);

    let full = b.full && b.notice == Notice::Failure && returnable_whole(b.original);
    let text = text_part(b, &host, full);
    let status = status_part(b, &host);
    let headers = if full {
        b.original.to_vec()
    } else {
        header_section(b.original)
    };

    let text_8bit = !text.is_ascii();
    let headers_8bit = !headers.is_ascii();

    let part_heads: [String; 3] = [
        format!(
            "Content-Description: Notification\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: {}\r\n",
            if text_8bit { "8bit" } else { "7bit" }
        ),
        // RFC 3464 §2.1: the delivery-status body is 7-bit by construction.
        "Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n"
            .to_string(),
        // RFC 6522 §4: text/rfc822-headers carries the header section only;
        // RFC 3461 §4.3 RET=FULL the whole message.
        format!(
            "Content-Description: {}\r\n\
             Content-Type: {}\r\n\
             Content-Transfer-Encoding: {}\r\n",
            if full {
                "Undelivered message"
            } else {
                "Message headers"
            },
            if full {
                "message/rfc822"
            } else {
                "text/rfc822-headers"
            },
            if headers_8bit { "8bit" } else { "7bit" }
        ),
    ];
    let bodies: [&[u8]; 3] = [text.as_bytes(), status.as_bytes(), &headers];
    let parts: Vec<Part<'_>> = part_heads
        .iter()
        .zip(bodies)
        .map(|(head, body)| Part {
            headers: head,
            body,
        })
        .collect();
    // The whole original is checked too, not only what is attached, so the
    // choice stays safe should the full message ever be attached.
    let multipart = Multipart::new(
        &boundary_candidate(&qid, b.now),
        "This is a MIME-encapsulated message.",
        &parts,
        &[b.original],
    );

    let mut top = String::with_capacity(1024);
    push_field(
        &mut top,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    // Angle brackets and spaces are dropped from the sender so it cannot
    // close the angle-addr early or smuggle in a display name; the envelope,
    // not this header, routes the bounce.
    let to: String = clean_line(b.sender, MAX_ADDRESS)
        .chars()
        .filter(|c| *c != '<' && *c != '>' && *c != ' ')
        .collect();
    push_field(&mut top, "To", &format!("<{to}>"));
    push_field(
        &mut top,
        "Subject",
        match b.notice {
            Notice::Failure => "Undelivered Mail Returned to Sender",
            Notice::Delay { .. } => "Delayed Mail (still being retried)",
            Notice::Relayed => "Successful Mail Delivery Report (relayed)",
        },
    );
    push_field(&mut top, "Date", &date::rfc5322(b.now));
    // RFC 5322 §3.6.4: id-left is dot-atom-text, which `token` guarantees.
    push_field(
        &mut top,
        "Message-ID",
        &format!("<{qid}.{}.dsn@{host}>", b.now),
    );
    // RFC 3834 §5: marks the bounce as automatic so responders stay quiet.
    push_field(&mut top, "Auto-Submitted", "auto-replied");
    push_field(&mut top, "MIME-Version", "1.0");
    top.push_str(&multipart.report_content_type("delivery-status"));
    // RFC 2045 §6.4: a multipart must declare 8bit when any part is 8bit.
    push_field(
        &mut top,
        "Content-Transfer-Encoding",
        if text_8bit || headers_8bit {
            "8bit"
        } else {
            "7bit"
        },
    );
    top.push_str("\r\n");

    let mut out = top.into_bytes();
    out.reserve(text.len() + status.len() + headers.len() + 512);
    multipart.write_body(&mut out);
    out
}

/// A message that can go back whole inside `message/rfc822`: small
/// enough, and no line over the RFC 5322 §2.1.1 limit (a longer one would
/// have to be cut, which would no longer be the message).
fn returnable_whole(original: &[u8]) -> bool {
    original.len() <= FULL_CAP
        && original
            .split(|&c| c == b'\n')
            .all(|line| line.len() <= MAX_LINE + 1)
        && !original.contains(&0)
}

fn text_part(b: &Bounce<'_>, host: &str, full: bool) -> String {
    let mut t = String::with_capacity(1024);
    push_wrapped(
        &mut t,
        &format!("This is the mail delivery system at {host}."),
        "",
        "",
    );
    t.push_str("\r\n");
    let why = match b.notice {
        Notice::Failure if b.expired => {
            "Your message could not be delivered to the recipients listed below \
         before its time in the queue ran out, so delivery has been abandoned."
                .to_string()
        }
        Notice::Failure => "Your message could not be delivered to the recipients listed below. \
         The failure is permanent, so no further attempts will be made."
            .to_string(),
        Notice::Delay { until } => format!(
            "Your message has not yet been delivered to the recipients listed below. \
             It is still queued and will be retried until {}; you do not need to send it again.",
            date::rfc5322(until)
        ),
        Notice::Relayed => {
            "Your message was handed on to the recipients' mail servers listed below. \
         They do not offer delivery status notifications, so this is the last report you \
         will get about it."
                .to_string()
        }
    };
    push_wrapped(&mut t, &why, "", "");
    push_wrapped(
        &mut t,
        &format!(
            "The message arrived on {} with queue ID {}; {} attached.",
            date::rfc5322(b.arrival),
            token(b.queue_id, 64),
            if full { "it is" } else { "its headers are" }
        ),
        "",
        "",
    );
    for r in b.recipients {
        t.push_str("\r\n");
        // SMTPUTF8 addresses are shown as-is: this part is UTF-8 text.
        let address = clean_line(&r.address, MAX_ADDRESS);
        let reason = clean_line(&r.reason, MAX_TEXT);
        push_wrapped(&mut t, &format!("<{address}>: {reason}"), "", "    ");
        let remote = r.remote_mta.as_deref().and_then(remote_host);
        let diagnostic = r
            .diagnostic
            .as_deref()
            .map(|d| clean_line(d, MAX_TEXT))
            .filter(|d| !d.is_empty());
        let said = match (remote, diagnostic) {
            (Some(h), Some(d)) => Some(format!("The server {h} said: {d}")),
            (None, Some(d)) => Some(format!("The remote server said: {d}")),
            (Some(h), None) => Some(format!("Last server tried: {h}")),
            (None, None) => None,
        };
        if let Some(said) = said {
            push_wrapped(&mut t, &said, "    ", "    ");
        }
    }
    t
}

// RFC 3464 §2.1–§2.3: per-message fields, blank line, then one group of
// per-recipient fields per recipient, groups separated by blank lines.
fn status_part(b: &Bounce<'_>, host: &str) -> String {
    let mut s = String::with_capacity(256 + 256 * b.recipients.len());
    // §2.2.1: the sender's ENVID, exactly as given (xtext-decoded at MAIL,
    // printable ASCII only), so it can match the report to its message.
    if let Some(envid) = b.envid.map(|e| ascii_only(&clean_line(e, 200))) {
        if !envid.is_empty() {
            push_field(&mut s, "Original-Envelope-Id", &envid);
        }
    }
    // §2.2.2: Reporting-MTA is required and names us by DNS name.
    push_field(&mut s, "Reporting-MTA", &format!("dns; {host}"));
    // §2.2.5
    push_field(&mut s, "Arrival-Date", &date::rfc5322(b.arrival));
    let now = date::rfc5322(b.now);
    for r in b.recipients {
        s.push_str("\r\n");
        // §2.3.1: from ORCPT, address type and address as the sender gave
        // them.
        if let Some((kind, addr)) = &r.orcpt {
            let kind = token(kind, 32);
            let addr = ascii_only(&clean_line(addr, MAX_ENCODED_ADDRESS));
            if !addr.is_empty() {
                push_field(&mut s, "Original-Recipient", &format!("{kind}; {addr}"));
            }
        }
        // §2.3.2
        push_field(&mut s, "Final-Recipient", &typed_address(&r.address));
        // §2.3.3: both a permanent failure and an expired lifetime end the
        // attempts, so the action is "failed" either way.
        let action = match b.notice {
            _ if r.relayed => "relayed",
            Notice::Failure => "failed",
            Notice::Delay { .. } => "delayed",
            Notice::Relayed => "relayed",
        };
        push_field(&mut s, "Action", action);
        // §2.3.4 requires a syntactically valid code; a caller mistake must
        // not produce an unparseable report.
        let status = r.status.trim();
        let status = if r.relayed || b.notice == Notice::Relayed {
            // RFC 3463 §3.1: X.0.0, success with nothing more to say.
            OK
        } else if is_status_code(status) {
            status
        } else if b.expired {
            // RFC 3463 §3.5: X.4.7 "delivery time expired".
            EXPIRED
        } else {
            PERM_OTHER
        };
        push_field(&mut s, "Status", status);
        if let Some(h) = r.remote_mta.as_deref().and_then(remote_host) {
            // §2.3.5
            push_field(&mut s, "Remote-MTA", &format!("dns; {h}"));
        }
        if let Some(d) = r
            .diagnostic
            .as_deref()
            .map(|d| ascii_only(&clean_line(d, MAX_TEXT)))
            .filter(|d| !d.is_empty())
        {
            // §2.3.6; the field is US-ASCII text, so non-ASCII became '?'.
            push_field(&mut s, "Diagnostic-Code", &format!("smtp; {d}"));
        }
        // §2.3.7
        push_field(&mut s, "Last-Attempt-Date", &now);
        // §2.3.8
        if let Notice::Delay { until } = b.notice {
            push_field(&mut s, "Will-Retry-Until", &date::rfc5322(until));
        }
    }
    s
}

// RFC 3464 §2.3.2 with RFC 3461 §4 address types: "rfc822" for plain ASCII
// addresses; otherwise "utf-8" (RFC 6533 §3) in its utf-8-addr-xtext form,
// which escapes every non-ASCII character as \x{HEX}.  The raw UTF-8 form is
// only allowed in message/global-delivery-status, and switching media type
// for one recipient is not worth the complexity, so this part stays 7-bit.
fn typed_address(address: &str) -> String {
    let clean = clean_line(address, MAX_ADDRESS);
    if clean.is_ascii() {
        return format!("rfc822; {clean}");
    }
    let mut enc = String::with_capacity(clean.len() * 2);
    for c in clean.chars() {
        let piece = if c.is_ascii_graphic() && !matches!(c, '\\' | '+' | '=') {
            c.to_string()
        } else {
            // RFC 6533 §3 HEXPOINT: uppercase hex without leading zeros.
            format!("\\x{{{:X}}}", u32::from(c))
        };
        // The encoded address is a single word and cannot be folded, so it
        // is cut whole-character rather than allowed past the line limit.
        if enc.len() + piece.len() > MAX_ENCODED_ADDRESS {
            break;
        }
        enc.push_str(&piece);
    }
    format!("utf-8; {enc}")
}

// The header section of the original: every line up to the first empty one
// (RFC 5322 §2.1), with LF-only input normalised to CRLF, stray CR and NUL
// bytes blanked (RFC 5321 §2.3.8 forbids them bare), over-long lines cut to
// the RFC 5322 §2.1.1 limit, and the whole capped at `HEADERS_CAP` at a line
// boundary.
fn header_section(original: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for raw in original.split(|&c| c == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        let line = truncate_bytes(line, MAX_LINE);
        if out.len() + line.len() + 2 > HEADERS_CAP {
            break;
        }
        out.extend(
            line.iter()
                .map(|&c| if c == b'\r' || c == 0 { b' ' } else { c }),
        );
        out.extend_from_slice(b"\r\n");
    }
    out
}

// Cuts at most `max` bytes, backing off over UTF-8 continuation bytes so a
// well-formed multibyte character is never split.
fn truncate_bytes(line: &[u8], max: usize) -> &[u8] {
    if line.len() <= max {
        return line;
    }
    let mut end = max;
    while end > 0 && line.get(end).is_some_and(|&c| c & 0xC0 == 0x80) {
        end -= 1;
    }
    // Invalid UTF-8 made of continuation bytes only: a plain byte cut is all
    // that is left.
    let end = if end == 0 { max } else { end };
    line.get(..end).unwrap_or(line)
}

// A value that may go into a header field: controls (CR, LF, TAB, NUL, DEL,
// C1) and Unicode line separators become spaces, so nothing from outside can
// start a field or line of its own (RFC 5322 §2.2); whitespace runs collapse
// so folding can only ever insert CRLF before a single existing space.
fn clean_line(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    let mut pending_space = false;
    for c in s.chars() {
        if c.is_control() || c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        let need = c.len_utf8() + usize::from(pending_space);
        if out.len() + need > max {
            break;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

fn ascii_only(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

// Our own name for From, Message-ID and Reporting-MTA; an unusable
// configured name falls back to "localhost" so those fields stay valid.
fn host_name(s: &str) -> String {
    remote_host(s).unwrap_or_else(|| "localhost".to_string())
}

// A DNS name: letters, digits, '-', '.' and '_' only (RFC 1035 §2.3.1, plus
// '_' seen in the wild), no leading, trailing or doubled dots so it is also
// valid dot-atom-text (RFC 5322 §3.2.3) for the Message-ID and From address.
// None when nothing usable is left, so an optional field is left out rather
// than invented.
fn remote_host(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len().min(MAX_HOST));
    for c in s.trim().trim_end_matches('.').chars() {
        if out.len() >= MAX_HOST {
            break;
        }
        if c == '.' {
            if !out.is_empty() && !out.ends_with('.') {
                out.push('.');
            }
        } else if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            out.push(c);
        }
    }
    while out.ends_with('.') {
        out.pop();
    }
    (!out.is_empty()).then_some(out)
}

// Letters and digits only: safe inside a Message-ID, a MIME boundary and the
// human text without any quoting.
fn token(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(max)
        .collect();
    if t.is_empty() {
        "none".to_string()
    } else {
        t
    }
}

fn boundary_candidate(qid: &str, now: u64) -> String {
    // "=_" cannot appear in quoted-printable output, so a boundary starting
    // with it never collides with QP-encoded content in the original headers.
    let id: String = qid.chars().take(MAX_BOUNDARY_ID).collect();
    format!("=_dsn_{id}_{now}")
}

// Splits at most `max` bytes off the front of `s` on a char boundary, always
// taking at least one character so callers make progress.
fn split_at_most(s: &str, max: usize) -> (&str, &str) {
    if s.len() <= max {
        return (s, "");
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    if end == 0 {
        end = s.chars().next().map_or(s.len(), char::len_utf8);
    }
    match (s.get(..end), s.get(end..)) {
        (Some(a), Some(b)) => (a, b),
        _ => (s, ""),
    }
}

// Writes "Name: value" folded per RFC 5322 §2.2.3: CRLF is only ever
// inserted before an existing space, so unfolding restores the value.  A
// single word too long for any line (only possible for free text such as a
// diagnostic) is cut, which adds a space on unfolding; that is the price of
// the §2.1.1 hard limit.
fn push_field(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push(':');
    let mut fresh = name.len() + 1;
    let mut len = fresh;
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        let mut rest = word;
        while !rest.is_empty() {
            if len > fresh && len + 1 + rest.len() > FOLD_AT {
                out.push_str("\r\n");
                len = 0;
                fresh = 0;
            }
            let room = MAX_LINE.saturating_sub(len + 1);
            let (piece, tail) = split_at_most(rest, room);
            out.push(' ');
            out.push_str(piece);
            len += 1 + piece.len();
            rest = tail;
            if !rest.is_empty() {
                out.push_str("\r\n");
                len = 0;
                fresh = 0;
            }
        }
    }
    out.push_str("\r\n");
}

// Word-wraps human text at `WRAP_AT`, cutting words only when they would
// break the RFC 5322 §2.1.1 hard limit.
fn push_wrapped(out: &mut String, text: &str, first: &str, rest_prefix: &str) {
    let text = clean_line(text, MAX_TEXT * 2);
    out.push_str(first);
    let mut fresh = first.len();
    let mut len = fresh;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut rest = word;
        while !rest.is_empty() {
            if len > fresh && len + 1 + rest.len() > WRAP_AT {
                out.push_str("\r\n");
                out.push_str(rest_prefix);
                len = rest_prefix.len();
                fresh = len;
            }
            let sep = usize::from(len > fresh);
            let room = MAX_LINE.saturating_sub(len + sep);
            let (piece, tail) = split_at_most(rest, room);
            if sep == 1 {
                out.push(' ');
            }
            out.push_str(piece);
            len += sep + piece.len();
            rest = tail;
            if !rest.is_empty() {
                out.push_str("\r\n");
                out.push_str(rest_prefix);
                len = rest_prefix.len();
                fresh = len;
            }
        }
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::mime::contains;

    fn rcpt(
        address: &str,
        status: &str,
        mx: Option<&str>,
        diag: Option<&str>,
        reason: &str,
    ) -> FailedRecipient {
        FailedRecipient {
            address: address.to_string(),
            status: status.to_string(),
            remote_mta: mx.map(str::to_string),
            diagnostic: diag.map(str::to_string),
            reason: reason.to_string(),
            orcpt: None,
            relayed: false,
        }
    }

    const ORIGINAL: &[u8] = b"From: Alice <alice@origin.test>\r\n\
To: bob@example.test\r\n\
Subject: hello\r\n\
\x20folded continuation\r\n\
\r\n\
Body line one\r\n\
Body: not a header\r\n";

    fn bounce<'a>(recipients: &'a [FailedRecipient], original: &'a [u8]) -> Bounce<'a> {
        Bounce {
            reporting_mta: "relay.origin.test",
            queue_id: "4XyZ12AB",
            sender: "alice@origin.test",
            arrival: 1_798_600_000,
            now: 1_798_606_146,
            recipients,
            original,
            expired: false,
            notice: Notice::Failure,
            envid: None,
            full: false,
        }
    }

    // Every line ends in CRLF (no bare CR or LF) and is at most 998 octets.
    fn assert_lines_ok(msg: &[u8]) {
        assert!(msg.ends_with(b"\r\n"));
        let mut start = 0;
        for (i, &c) in msg.iter().enumerate() {
            if c == b'\n' {
                assert!(i > 0 && msg[i - 1] == b'\r', "bare LF at {i}");
                let len = i - 1 - start;
                assert!(len <= MAX_LINE, "line of {len} octets at {start}");
                start = i + 1;
            } else if c == b'\r' {
                assert_eq!(msg.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
        }
    }

    fn text(msg: &[u8]) -> String {
        String::from_utf8(msg.to_vec()).expect("utf-8 output")
    }

    fn boundary_of(msg: &str) -> String {
        let head = msg.split("\r\n\r\n").next().expect("header section");
        let at = head.find("boundary=\"").expect("boundary parameter") + "boundary=\"".len();
        let end = head[at..].find('"').expect("closing quote");
        head[at..at + end].to_string()
    }

    struct Part {
        headers: String,
        body: String,
    }

    // Parses the report back per RFC 2046 §5.1.1: preamble, parts, close.
    fn parts_of(msg: &str) -> (String, Vec<Part>, String) {
        let boundary = boundary_of(msg);
        let (_, body) = msg.split_once("\r\n\r\n").expect("top header/body split");
        let delim = format!("\r\n--{boundary}");
        let pieces: Vec<&str> = body.split(delim.as_str()).collect();
        let preamble = pieces[0].to_string();
        let epilogue = pieces[pieces.len() - 1].to_string();
        let parts = pieces[1..pieces.len() - 1]
            .iter()
            .map(|p| {
                let p = p.strip_prefix("\r\n").expect("CRLF after delimiter");
                let (h, b) = p.split_once("\r\n\r\n").expect("part header/body split");
                Part {
                    headers: h.to_string(),
                    body: b.to_string(),
                }
            })
            .collect();
        (preamble, parts, epilogue)
    }

    fn sample() -> Vec<FailedRecipient> {
        vec![
            rcpt(
                "bob@example.test",
                "5.1.1",
                Some("mx1.example.test"),
                Some("550 5.1.1 no such user"),
                "the remote server rejected the recipient",
            ),
            rcpt(
                "carol@strict.test",
                "5.7.10",
                None,
                None,
                "MTA-STS policy of strict.test (enforce): no MX host passed validated TLS",
            ),
        ]
    }

    #[test]
    fn structure_parses_back() {
        let r = sample();
        let msg = build(&bounce(&r, ORIGINAL));
        assert_lines_ok(&msg);
        let msg = text(&msg);
        let (preamble, parts, epilogue) = parts_of(&msg);
        assert!(preamble.contains("MIME"));
        assert_eq!(epilogue, "--\r\n");
        assert_eq!(parts.len(), 3);
        assert!(parts[0]
            .headers
            .contains("Content-Type: text/plain; charset=utf-8"));
        assert!(parts[1]
            .headers
            .contains("Content-Type: message/delivery-status"));
        assert!(parts[2]
            .headers
            .contains("Content-Type: text/rfc822-headers"));
        assert!(parts[0]
            .body
            .contains("<bob@example.test>: the remote server rejected the recipient"));
        assert!(parts[0].body.contains("550 5.1.1 no such user"));
        assert!(parts[0].body.contains("mx1.example.test"));
        assert!(parts[0].body.contains("MTA-STS"));
        assert!(parts[0].body.contains("permanent"));
    }

    #[test]
    fn top_level_headers() {
        let r = sample();
        let msg = text(&build(&bounce(&r, ORIGINAL)));
        let head = format!("{}\r\n", msg.split("\r\n\r\n").next().unwrap_or_default());
        for want in [
            "From: Mail Delivery System <MAILER-DAEMON@relay.origin.test>\r\n",
            "To: <alice@origin.test>\r\n",
            "Subject: Undelivered Mail Returned to Sender\r\n",
            "Date: Wed, 30 Dec 2026 04:49:06 +0000\r\n",
            "Message-ID: <4XyZ12AB.1798606146.dsn@relay.origin.test>\r\n",
            "Auto-Submitted: auto-replied\r\n",
            "MIME-Version: 1.0\r\n",
            "Content-Type: multipart/report; report-type=delivery-status;\r\n",
            "Content-Transfer-Encoding: 7bit\r\n",
        ] {
            assert!(head.contains(want), "missing {want:?} in {head}");
        }
        assert!(head.starts_with("From: "));
    }

    #[test]
    fn delivery_status_fields_per_recipient() {
        let r = sample();
        let msg = text(&build(&bounce(&r, ORIGINAL)));
        let (_, parts, _) = parts_of(&msg);
        let ds = &parts[1].body;
        assert!(ds.is_ascii());
        let groups: Vec<&str> = ds.trim_end_matches("\r\n").split("\r\n\r\n").collect();
        assert_eq!(groups.len(), 3, "{ds}");
        assert_eq!(
            groups[0],
            "Reporting-MTA: dns; relay.origin.test\r\nArrival-Date: Wed, 30 Dec 2026 03:06:40 +0000"
        );
        assert_eq!(
            groups[1],
            "Final-Recipient: rfc822; bob@example.test\r\n\
             Action: failed\r\n\
             Status: 5.1.1\r\n\
             Remote-MTA: dns; mx1.example.test\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\
             Last-Attempt-Date: Wed, 30 Dec 2026 04:49:06 +0000"
        );
        assert_eq!(
            groups[2],
            "Final-Recipient: rfc822; carol@strict.test\r\n\
             Action: failed\r\n\
             Status: 5.7.10\r\n\
             Last-Attempt-Date: Wed, 30 Dec 2026 04:49:06 +0000"
        );
    }

    #[test]
    fn expired_text_and_status_fallback() {
        let r = vec![rcpt(
            "bob@example.test",
            "garbage",
            Some("mx.example.test"),
            None,
            "timed out",
        )];
        let mut b = bounce(&r, ORIGINAL);
        b.expired = true;
        let msg = text(&build(&b));
        let (_, parts, _) = parts_of(&msg);
        assert!(parts[0].body.contains("time in the queue ran out"));
        assert!(parts[1]
            .body
            .contains("Action: failed\r\nStatus: 4.4.7\r\n"));
        assert!(!parts[1].body.contains("Diagnostic-Code"));
        b.expired = false;
        let msg = text(&build(&b));
        assert!(msg.contains("Status: 5.0.0\r\n"));
    }

    #[test]
    fn boundary_avoids_original_and_parts() {
        let r = sample();
        let cand = boundary_candidate("4XyZ12AB", 1_798_606_146);
        let mut orig =
            format!("X-Trap: --{cand}\r\nX-Trap2: {cand}_1\r\n\r\nbody\r\n").into_bytes();
        let msg = text(&build(&bounce(&r, &orig)));
        let used = boundary_of(&msg);
        assert_ne!(used, cand);
        assert_eq!(used, format!("{cand}_2"));
        assert!(used.len() <= 70);
        assert!(!contains(&orig, used.as_bytes()));
        assert_eq!(parts_of(&msg).1.len(), 3);

        // Only in the original's body, which is not attached: still avoided.
        orig = format!("Subject: x\r\n\r\n--{cand}\r\n").into_bytes();
        let msg = text(&build(&bounce(&r, &orig)));
        assert_ne!(boundary_of(&msg), cand);

        // A remote reply cannot plant a delimiter either.
        let r2 = vec![rcpt(
            "a@b.test",
            "5.0.0",
            None,
            Some(&format!("550 --{cand}")),
            "x",
        )];
        let msg = text(&build(&bounce(&r2, ORIGINAL)));
        assert_ne!(boundary_of(&msg), cand);
        assert_eq!(parts_of(&msg).1.len(), 3);

        // No collision: the plain candidate is used.
        let msg = text(&build(&bounce(&r, ORIGINAL)));
        assert_eq!(boundary_of(&msg), cand);
    }

    #[test]
    fn header_section_only() {
        let want = "From: Alice <alice@origin.test>\r\nTo: bob@example.test\r\nSubject: hello\r\n folded continuation\r\n";
        assert_eq!(header_section(ORIGINAL), want.as_bytes());

        let lf = String::from_utf8(ORIGINAL.to_vec())
            .unwrap_or_default()
            .replace("\r\n", "\n");
        assert_eq!(header_section(lf.as_bytes()), want.as_bytes());

        // No body and no blank line: everything is header.
        let no_body = b"From: a@b.test\r\nSubject: s\r\n";
        assert_eq!(header_section(no_body), no_body);
        let no_body_lf = b"From: a@b.test\nSubject: s";
        assert_eq!(
            header_section(no_body_lf),
            b"From: a@b.test\r\nSubject: s\r\n"
        );

        // Stray CR inside a line is blanked, not passed through bare.
        assert_eq!(header_section(b"A: x\ry\r\n\r\nbody"), b"A: x y\r\n");
        assert!(header_section(b"\r\nbody only").is_empty());
        assert!(header_section(b"").is_empty());

        let r = sample();
        let msg = text(&build(&bounce(&r, lf.as_bytes())));
        let (_, parts, _) = parts_of(&msg);
        assert_eq!(parts[2].body, want);
        assert!(!msg.contains("Body line one"));
    }

    #[test]
    fn header_section_capped_at_line_boundary() {
        let mut orig = Vec::new();
        for i in 0..5000 {
            orig.extend_from_slice(format!("X-Filler-{i:05}: {}\r\n", "y".repeat(20)).as_bytes());
        }
        orig.extend_from_slice(&[b'Z'; 3000]);
        orig.extend_from_slice(b"\r\n\r\nbody\r\n");
        let h = header_section(&orig);
        assert!(h.len() <= HEADERS_CAP);
        assert!(h.len() > HEADERS_CAP - 100);
        assert!(h.ends_with(b"\r\n"));
        assert!(orig.starts_with(&h));
        assert_lines_ok(&h);

        let r = sample();
        assert_lines_ok(&build(&bounce(&r, &orig)));
    }

    #[test]
    fn overlong_original_header_line_is_cut() {
        let mut orig = b"X-Long: ".to_vec();
        orig.extend(std::iter::repeat_n(b'a', 3000));
        orig.extend_from_slice(b"\r\n\r\n");
        let h = header_section(&orig);
        assert_eq!(h.len(), MAX_LINE + 2);
        // A multibyte character straddling the limit is not split.
        let mut orig = vec![b'a'; MAX_LINE - 1];
        orig.extend_from_slice("é tail\r\n".as_bytes());
        let h = header_section(&orig);
        assert_eq!(h.len(), MAX_LINE - 1 + 2);
    }

    #[test]
    fn crlf_injection_is_neutralised() {
        let evil =
            "550 no\r\nBcc: victim@evil.test\r\n\r\nInjected: yes\n.\r\nX: \u{0}\u{7f}\u{85}z";
        let r = vec![rcpt(
            "bob@example.test\r\nBcc: a@evil.test",
            "5.1.1",
            Some("mx.example.test\r\nEvil: 1"),
            Some(evil),
            "reason\r\nX-Reason-Injected: 1",
        )];
        let mut b = bounce(&r, ORIGINAL);
        b.sender = "alice@origin.test>\r\nBcc: x@evil.test";
        let msg = build(&b);
        assert_lines_ok(&msg);
        let msg = text(&msg);
        for line in msg.split("\r\n") {
            for bad in [
                "Bcc:",
                "Injected:",
                "Evil:",
                "X-Reason-Injected:",
                "X:",
                ".",
            ] {
                assert!(
                    !line.starts_with(bad) || line.is_empty(),
                    "injected line {line:?}"
                );
            }
        }
        assert!(!msg.contains('\u{0}') && !msg.contains('\u{7f}') && !msg.contains('\u{85}'));
        assert!(msg.contains(
            "Diagnostic-Code: smtp; 550 no Bcc: victim@evil.test Injected: yes . X: z\r\n"
        ));
        assert!(msg.contains("To: <alice@origin.testBcc:x@evil.test>\r\n"));
        assert_eq!(parts_of(&msg).1.len(), 3);
    }

    #[test]
    fn long_diagnostic_stays_within_line_limit() {
        let spaced = "550 ".to_string() + &"word ".repeat(700);
        let solid = "550 ".to_string() + &"x".repeat(5000);
        let wide = "550 ".to_string() + &"é".repeat(3000);
        let r = vec![
            rcpt(
                "a@example.test",
                "5.0.0",
                None,
                Some(&spaced),
                &"long reason ".repeat(300),
            ),
            rcpt(
                "b@example.test",
                "5.0.0",
                None,
                Some(&solid),
                &"y".repeat(3000),
            ),
            rcpt("c@example.test", "5.0.0", None, Some(&wide), "z"),
            rcpt(
                &format!("{}@example.test", "q".repeat(2000)),
                "5.0.0",
                None,
                None,
                "z",
            ),
        ];
        let mut b = bounce(&r, ORIGINAL);
        let long_host = "h".repeat(2000);
        b.reporting_mta = &long_host;
        b.queue_id = &long_host;
        let msg = build(&b);
        assert_lines_ok(&msg);
        let msg = text(&msg);
        assert_eq!(msg.matches("Diagnostic-Code: smtp; 550").count(), 3);
        let (_, parts, _) = parts_of(&msg);
        assert!(parts[1].body.is_ascii());
        // Unfolding a folded field restores the spaced value exactly.
        let ds = parts[1].body.replace("\r\n ", " ");
        assert!(ds.contains(&format!("Diagnostic-Code: smtp; {}", spaced.trim_end())));
    }

    #[test]
    fn non_ascii_addresses() {
        let r = vec![rcpt(
            "用户@例子.test",
            "5.1.1",
            None,
            Some("550 nö"),
            "rejected",
        )];
        let mut b = bounce(&r, ORIGINAL);
        b.sender = "José@origin.test";
        let msg = build(&b);
        assert_lines_ok(&msg);
        let msg = text(&msg);
        let (_, parts, _) = parts_of(&msg);
        assert!(parts[0].body.contains("<用户@例子.test>: rejected"));
        assert!(parts[0].headers.contains("Content-Transfer-Encoding: 8bit"));
        assert!(msg.contains("To: <José@origin.test>\r\n"));
        assert!(msg
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .contains("Content-Transfer-Encoding: 8bit"));
        let ds = &parts[1].body;
        assert!(ds.is_ascii());
        assert!(
            ds.contains("Final-Recipient: utf-8; \\x{7528}\\x{6237}@\\x{4F8B}\\x{5B50}.test\r\n")
        );
        assert!(ds.contains("Diagnostic-Code: smtp; 550 n?\r\n"));
        assert_eq!(
            typed_address("a+b=c\\d@é.test"),
            "utf-8; a\\x{2B}b\\x{3D}c\\x{5C}d@\\x{E9}.test"
        );
        assert_eq!(typed_address("a+b@x.test"), "rfc822; a+b@x.test");
    }

    #[test]
    fn dsn_fields_actions_and_ret() {
        let mut r = sample();
        r[0].orcpt = Some(("rfc822".into(), "Orig@origin.test".into()));
        let mut b = bounce(&r, ORIGINAL);
        b.envid = Some("env\r\nX-Injected: 1");
        b.full = true;
        let msg = text(&build(&b));
        assert_lines_ok(msg.as_bytes());
        assert!(
            msg.contains("Original-Envelope-Id: env X-Injected: 1\r\n"),
            "{msg}"
        );
        assert!(!msg.contains("\r\nX-Injected"), "{msg}");
        assert!(
            msg.contains("Original-Recipient: rfc822; Orig@origin.test"),
            "{msg}"
        );
        assert!(msg.contains("Content-Type: message/rfc822"), "{msg}");
        assert!(
            msg.contains("Body line one"),
            "RET=FULL lost the body: {msg}"
        );
        // A line over the RFC 5322 limit cannot go back whole.
        let long = format!("Subject: x\r\n\r\n{}\r\n", "b".repeat(MAX_LINE + 1));
        let msg = text(&build(&bounce_full(&r, long.as_bytes())));
        assert!(msg.contains("text/rfc822-headers"), "{msg}");
        assert!(!msg.contains("bbbb"), "{msg}");

        let mut b = bounce(&r, ORIGINAL);
        b.notice = Notice::Delay {
            until: 1_798_700_000,
        };
        let msg = text(&build(&b));
        assert!(msg.contains("Action: delayed"), "{msg}");
        assert!(msg.contains("Will-Retry-Until: "), "{msg}");
        assert!(!msg.contains("Body line one"), "{msg}");

        r[0].relayed = true;
        let mut b = bounce(&r, ORIGINAL);
        b.notice = Notice::Relayed;
        let msg = text(&build(&b));
        assert!(msg.contains("Action: relayed\r\nStatus: 2.0.0"), "{msg}");
    }

    fn bounce_full<'a>(r: &'a [FailedRecipient], original: &'a [u8]) -> Bounce<'a> {
        let mut b = bounce(r, original);
        b.full = true;
        b
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let b = Bounce {
            reporting_mta: "",
            queue_id: "",
            sender: "",
            arrival: u64::MAX,
            now: u64::MAX,
            recipients: &[],
            original: b"",
            expired: true,
            notice: Notice::Failure,
            envid: None,
            full: false,
        };
        let msg = build(&b);
        assert_lines_ok(&msg);
        let msg = text(&msg);
        assert!(msg.contains("MAILER-DAEMON@localhost"));
        assert_eq!(parts_of(&msg).1.len(), 3);
        let invalid = [0xff_u8, 0xfe, b'\n', 0x80, b'\r', b'\n', b'\r', b'\n', b'x'];
        let r = sample();
        assert_lines_ok(&build(&bounce(&r, &invalid)));
    }
}
