//! SMTP replies read by the relay's delivery client and the diagnosis probe
//! (`src/smtp/reply.rs`): the bytes of any MX host, including an
//! attacker's. The input is split into lines at LF (a CR before it is
//! dropped, as the client does) and fed to one `ReplyBuilder`.
use mta_sts_agent::smtp::reply::{
    parse_line, Reply, ReplyBuilder, ReplyError, MAX_LINE, MAX_LINES,
};

fn check_reply(r: &Reply) {
    assert!((200..600).contains(&r.code));
    assert!(!r.lines.is_empty() && r.lines.len() <= MAX_LINES);
    for l in &r.lines {
        assert!(
            l.len() <= MAX_LINE * 3,
            "a line's text grows at most 3x by lossy UTF-8"
        );
    }
    // The two classes callers act on agree with the code's first digit.
    assert_eq!(r.is_positive(), r.code / 100 == 2, "{}", r.code);
    assert_eq!(r.is_permanent(), r.code / 100 == 5, "{}", r.code);
    assert!(r.one_line().starts_with(&r.code.to_string()));
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let mut builder = ReplyBuilder::default();
        let mut fed = 0usize;
        for raw in data.split(|&b| b == b'\n') {
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            let single = parse_line(line);
            match builder.push(line) {
                Ok(Some(reply)) => {
                    check_reply(&reply);
                    assert!(single
                        .as_ref()
                        .is_ok_and(|l| l.last && l.code == reply.code));
                    assert!(reply.lines.len() <= fed + 1);
                    // A finished reply starts the next one afresh.
                    builder = ReplyBuilder::default();
                    fed = 0;
                }
                Ok(None) => {
                    let l = single.expect("builder took a line parse_line refuses");
                    assert!(!l.last);
                    fed += 1;
                    assert!(fed <= MAX_LINES);
                }
                Err(ReplyError::LineTooLong) => {
                    assert!(line.len() > MAX_LINE);
                    return;
                }
                Err(ReplyError::TooManyLines) => {
                    assert_eq!(fed, MAX_LINES);
                    return;
                }
                Err(ReplyError::CodeChanged(a, b)) => {
                    assert_ne!(a, b);
                    return;
                }
                Err(ReplyError::Malformed(shown)) => {
                    assert!(single.is_err());
                    assert!(shown.chars().count() <= 80, "the shown excerpt stays short");
                    return;
                }
            }
        }
    });
}
