//! One SMTP command line received by the relay (`src/relay/command.rs`),
//! CRLF already removed: the bytes of any client the relay accepts.
use mta_sts_agent::relay::command::{
    parse, split_mailbox, Command, MAX_DOMAIN, MAX_ENVID, MAX_ORCPT, MAX_PATH,
};
use mta_sts_agent::smtp::xtext;
use mta_sts_agent_fuzz::has_control;

fn main() {
    afl::fuzz!(|line: &[u8]| {
        match parse(line) {
            Ok(cmd) => {
                // No accepted command carries CR, LF, NUL or another control
                // byte: that is how command smuggling starts.
                assert!(!line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f));
                check_command(&cmd);
            }
            Err(e) => {
                assert!((400..600).contains(&e.code), "error code {}", e.code);
                assert_eq!(e.enhanced.as_bytes()[0], b'0' + (e.code / 100) as u8);
                // The reply never carries client bytes that could break
                // the reply line.
                assert!(!has_control(&e.reply()), "{:?}", e.reply());
            }
        }
    });
}

fn check_command(cmd: &Command) {
    match cmd {
        Command::Ehlo(name) | Command::Helo(name) => {
            assert!(!name.is_empty() && name.len() <= MAX_DOMAIN);
            assert!(!name.contains([' ', '\t']));
        }
        Command::Mail { from, params } => {
            assert!(
                from.len() + 2 <= MAX_PATH,
                "reverse path of {} bytes",
                from.len()
            );
            assert!(!has_control(from));
            if !from.is_empty() {
                assert!(
                    split_mailbox(from).is_some(),
                    "{from:?} has no local@domain"
                );
            }
            if let Some(envid) = &params.envid {
                // Decoded xtext is printable ASCII (it goes into DSN fields).
                assert!(envid.bytes().all(|b| (32..=126).contains(&b)), "{envid:?}");
                assert!(envid.len() <= MAX_ENVID);
            }
            // The mailbox as parsed is itself a valid reverse path, and the
            // DSN and REQUIRETLS parameters as the relay writes them for a
            // next hop read back the same.
            let mut again = format!(
                "MAIL FROM:<{from}>{}",
                if params.smtputf8 { " SMTPUTF8" } else { "" }
            );
            if params.requiretls {
                again.push_str(" REQUIRETLS");
            }
            if let Some(ret) = params.ret {
                again.push_str(&format!(" RET={}", ret.keyword()));
            }
            if let Some(envid) = &params.envid {
                again.push_str(&format!(" ENVID={}", xtext::encode(envid)));
            }
            match parse(again.as_bytes()) {
                Ok(Command::Mail { from: f2, params: p2 }) => {
                    assert_eq!(&f2, from);
                    assert_eq!(p2.ret, params.ret);
                    assert_eq!(p2.requiretls, params.requiretls);
                    // An ENVID whose canonical encoding is over the limit
                    // (a client sent "+41" for "A") may be refused there.
                    if xtext::encode(params.envid.as_deref().unwrap_or("")).len() <= MAX_ENVID {
                        assert_eq!(p2.envid, params.envid);
                    }
                }
                Err(e) if params.envid.is_some() && e.message.contains("ENVID longer") => {}
                other => panic!("{again:?} re-parsed as {other:?}"),
            }
        }
        Command::Rcpt { to, params } => {
            assert!(!to.is_empty() && to.len() + 2 <= MAX_PATH);
            assert!(!has_control(to));
            if to != "postmaster" {
                assert!(split_mailbox(to).is_some(), "{to:?} has no local@domain");
            }
            let mut again = format!("RCPT TO:<{to}>");
            if let Some(n) = params.notify {
                again.push_str(&format!(" NOTIFY={}", n.keyword()));
            }
            let mut canonical_fits = true;
            if let Some(o) = &params.orcpt {
                assert!(!o.addr.is_empty());
                assert!(o.addr.bytes().all(|b| (32..=126).contains(&b)), "{o:?}");
                canonical_fits = o.encoded().len() <= MAX_ORCPT;
                again.push_str(&format!(" ORCPT={}", o.encoded()));
            }
            match parse(again.as_bytes()) {
                Ok(Command::Rcpt { to: t2, params: p2 }) => {
                    assert_eq!(&t2, to);
                    assert_eq!(&p2, params);
                }
                Err(e) if !canonical_fits && e.message.contains("ORCPT longer") => {}
                other => panic!("{again:?} re-parsed as {other:?}"),
            }
        }
        Command::Auth { mechanism, initial } => {
            assert!((1..=20).contains(&mechanism.len()));
            assert_eq!(mechanism, &mechanism.to_ascii_uppercase());
            if let Some(i) = initial {
                assert!(!i.is_empty() && !has_control(i) && !i.contains(' '));
            }
        }
        Command::Data
        | Command::Rset
        | Command::Noop
        | Command::Quit
        | Command::StartTls
        | Command::Help
        | Command::Vrfy
        | Command::Expn => {}
    }
}
