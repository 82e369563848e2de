//! One SMTP command line received by the relay (`src/relay/command.rs`),
//! CRLF already removed: the bytes of any client the relay accepts.
use mta_sts_agent::relay::command::{parse, split_mailbox, Command, MAX_DOMAIN, MAX_PATH};
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
            // The mailbox as parsed is itself a valid reverse path: what
            // the relay stores and later sends upstream reads back the same.
            let again = format!(
                "MAIL FROM:<{from}>{}",
                if params.smtputf8 { " SMTPUTF8" } else { "" }
            );
            match parse(again.as_bytes()) {
                Ok(Command::Mail { from: f2, .. }) => assert_eq!(&f2, from),
                other => panic!("{again:?} re-parsed as {other:?}"),
            }
        }
        Command::Rcpt { to } => {
            assert!(!to.is_empty() && to.len() + 2 <= MAX_PATH);
            assert!(!has_control(to));
            if to != "postmaster" {
                assert!(split_mailbox(to).is_some(), "{to:?} has no local@domain");
            }
            let again = format!("RCPT TO:<{to}>");
            match parse(again.as_bytes()) {
                Ok(Command::Rcpt { to: t2 }) => assert_eq!(&t2, to),
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
