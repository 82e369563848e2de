//! One client connection to the relay's SMTP server (RFC 5321): the
//! command loop, the limits, and the DATA phase that ends with the message
//! durably spooled before `250`.
//!
//! Limits, each with the reply a client gets:
//! - a command line over [`MAX_COMMAND_LINE`] octets: `500 5.5.2`, the
//!   rest of the line discarded;
//! - `relay.max_commands` commands or [`MAX_ERRORS`] errors in a session:
//!   `421 4.7.0` and the connection closed;
//! - a command line not complete within `relay.command_timeout` (a
//!   deadline: a trickle of bytes does not reset it): `421 4.4.2`, closed;
//! - in DATA, silence longer than `relay.command_timeout`, or the whole
//!   data phase longer than `relay.data_deadline`: `421 4.4.2`, closed;
//! - a message over `relay.max_message_size`: `552 5.3.4` after its end;
//! - a data line over [`MAX_DATA_LINE`] octets: `500 5.5.2` after the end;
//! - more than `relay.max_recipients` recipients: `452 4.5.3`;
//! - `relay.auth_max_failures` failed AUTHs from one address: `454 4.7.0`
//!   until its back-off is over.
//!
//! Line endings: commands may end in a bare LF (tolerated, as Postfix
//! does). The data is read by [`crate::smtp::data`]: bare CR and bare LF
//! end a line and are stored as CRLF, but only a real `CRLF . CRLF` ends
//! the message, and an over-long line keeps its ending (the SMTP smuggling
//! defence, Postfix's `smtpd_forbid_bare_newline = normalize`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::command::{self, Command, MailParams, RcptParams};
use super::context::RelayContext;
use super::spool::Envelope;
use super::spool_limits::EnvelopeBudget;
use crate::smtp::data::DataDecoder;
use crate::smtp::status::{
    AUTH_INVALID, BAD_CONNECTION, BAD_MAILBOX, BAD_SYSTEM, DESTINATION_OK,
    ENCRYPTION_REQUIRED_FOR_MECHANISM, INVALID_ARGUMENTS, INVALID_COMMAND, MESSAGE_TOO_BIG,
    NON_ASCII_ADDRESS, NOT_AUTHORIZED, OK, PERM_ENCRYPTION_NEEDED, PERM_SECURITY, SECURITY_OK,
    SENDER_OK, SYNTAX_ERROR, TEMP_MAIL_SYSTEM, TEMP_SECURITY, TOO_MANY_RECIPIENTS,
};
use crate::store::unix_now;

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4 gives 512; the
/// SIZE and other parameters of ESMTP push real clients past it).
pub const MAX_COMMAND_LINE: usize = 2048;
/// Longest message line kept as is. RFC 5322 §2.1.1 allows 998 octets;
/// longer lines are relayed unchanged up to this bound.
pub const MAX_DATA_LINE: usize = 64 * 1024;
/// Errors in a session before the server hangs up.
pub const MAX_ERRORS: usize = 20;
/// How long a refused client may stay to read its 554 and say QUIT.
pub const REFUSED_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Plain TCP, or TLS after STARTTLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the handshake owns the socket.
    Gone,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// What a bounded line read produced.
enum Line {
    /// The line without its ending (CRLF or a bare LF).
    Done {
        bytes: Vec<u8>,
    },
    /// Longer than the bound; the rest up to the next LF is discarded.
    TooLong,
    Closed,
    TimedOut,
}

struct Transaction {
    sender: String,
    params: MailParams,
    rcpts: Vec<String>,
    /// NOTIFY and ORCPT of each recipient, same order.
    rcpt_params: Vec<RcptParams>,
    /// Room left in the envelope the spool can store and read back.
    budget: EnvelopeBudget,
}

pub struct Session {
    stream: Stream,
    buf: Vec<u8>,
    /// Discarding the rest of an over-long line.
    skipping: bool,
    peer: SocketAddr,
    shared: Arc<RelayContext>,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    tx: Option<Transaction>,
    commands: usize,
    errors: usize,
    /// The client's network may relay.
    allowed: bool,
    /// The user who authenticated (RFC 4954).
    user: Option<String>,
}

/// Why the session ends.
enum End {
    Quit,
    Hangup,
}

type Step = Result<(), End>;

impl Session {
    pub fn new(tcp: TcpStream, peer: SocketAddr, shared: Arc<RelayContext>) -> Session {
        Session {
            stream: Stream::Plain(tcp),
            buf: Vec::with_capacity(4096),
            skipping: false,
            peer,
            shared,
            helo: None,
            esmtp: false,
            tls: false,
            tx: None,
            commands: 0,
            errors: 0,
            allowed: false,
            user: None,
        }
    }

    async fn write(&mut self, text: &str) -> Step {
        let timeout = self.shared.cfg.command_timeout;
        let write = async {
            self.stream.write_all(text.as_bytes()).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Hangup),
        }
    }

    async fn reply(&mut self, line: &str) -> Step {
        self.write(&format!("{line}\r\n")).await
    }

    /// The deadline for a command line starting now.
    fn command_deadline(&self) -> Instant {
        Instant::now() + self.shared.cfg.command_timeout
    }

    /// Reads one line of at most `limit` octets (ending included), all of
    /// it before `deadline`: slow bytes do not buy more time.
    async fn read_line(&mut self, limit: usize, deadline: Instant) -> Line {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut bytes: Vec<u8> = self.buf.drain(..=pos).collect();
                if self.skipping {
                    self.skipping = false;
                    return Line::TooLong;
                }
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
                if bytes.len() + 2 > limit {
                    return Line::TooLong;
                }
                return Line::Done { bytes };
            }
            if self.buf.len() > limit {
                // Keep memory bounded: drop what we have, skip to the LF.
                self.buf.clear();
                self.skipping = true;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Line::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => return Line::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Serves the connection to its end. `allowed`: the client's network
    /// may relay.
    pub async fn run(mut self, allowed: bool) {
        let host = self.shared.hostname.clone();
        self.allowed = allowed;
        // With AUTH configured, other networks may connect and must
        // authenticate before MAIL; without it they are refused at once.
        if !allowed && self.shared.users.is_none() {
            // The listener refuses these before they get here; never
            // serve one as if it were allowed.
            self.refused().await;
            return;
        }
        if self
            .reply(&format!("220 {host} ESMTP mta-sts-agent"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            match self.next_command().await {
                Ok(()) => {}
                Err(End::Quit) => {
                    let _ = self.reply(&format!("221 {OK} Bye")).await;
                    break;
                }
                Err(End::Hangup) => break,
            }
        }
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), self.stream.shutdown()).await;
    }

    /// Serves a client that may not relay: 554, then only QUIT, for at
    /// most [`REFUSED_DEADLINE`].
    pub async fn refused(mut self) {
        let host = self.shared.hostname.clone();
        let _ = self.refuse(&host).await;
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), self.stream.shutdown()).await;
    }

    /// RFC 5321 §3.1: a server that will not serve a client answers 554
    /// and then only QUIT; we hang up after a few commands.
    async fn refuse(&mut self, host: &str) -> Step {
        let deadline = Instant::now() + REFUSED_DEADLINE.min(self.shared.cfg.command_timeout);
        self.reply(&format!("554 {NOT_AUTHORIZED} {host} relay access denied"))
            .await?;
        for _ in 0..10 {
            match self.read_line(MAX_COMMAND_LINE, deadline).await {
                Line::Done { bytes } => {
                    if bytes.eq_ignore_ascii_case(b"QUIT") {
                        return self.reply(&format!("221 {OK} Bye")).await;
                    }
                    self.reply(&format!("503 {NOT_AUTHORIZED} relay access denied"))
                        .await?;
                }
                Line::TooLong => {
                    self.reply(&format!("500 {SYNTAX_ERROR} Line too long"))
                        .await?
                }
                Line::Closed | Line::TimedOut => return Ok(()),
            }
        }
        Ok(())
    }

    async fn error(&mut self, reply: &str) -> Step {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            tracing::warn!(peer = %self.peer, "too many errors; closing the session");
            let _ = self
                .reply(&format!("421 {TEMP_SECURITY} Too many errors, closing"))
                .await;
            return Err(End::Hangup);
        }
        self.reply(reply).await
    }

    async fn next_command(&mut self) -> Step {
        let deadline = self.command_deadline();
        let line = match self.read_line(MAX_COMMAND_LINE, deadline).await {
            Line::Done { bytes } => bytes,
            Line::TooLong => {
                return self
                    .error(&format!("500 {SYNTAX_ERROR} Line too long"))
                    .await
            }
            Line::Closed => return Err(End::Hangup),
            Line::TimedOut => {
                tracing::info!(peer = %self.peer, timeout = ?self.shared.cfg.command_timeout, "no complete command line within relay.command_timeout; closing");
                let _ = self
                    .reply(&format!("421 {BAD_CONNECTION} Timeout, closing"))
                    .await;
                return Err(End::Hangup);
            }
        };
        self.commands += 1;
        if self.commands > self.shared.cfg.max_commands {
            let _ = self
                .reply(&format!("421 {TEMP_SECURITY} Too many commands, closing"))
                .await;
            return Err(End::Hangup);
        }
        let cmd = match command::parse(&line) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(peer = %self.peer, reply = %e.reply(), "bad command");
                return self.error(&e.reply()).await;
            }
        };
        match cmd {
            Command::Ehlo(name) => self.ehlo(name, true).await,
            Command::Helo(name) => self.ehlo(name, false).await,
            Command::Mail { from, params } => self.mail(from, params).await,
            Command::Rcpt { to, params } => self.rcpt(to, params).await,
            Command::Data => self.data().await,
            Command::Rset => {
                self.tx = None;
                self.reply(&format!("250 {OK} Ok")).await
            }
            Command::Noop => self.reply(&format!("250 {OK} Ok")).await,
            Command::Quit => Err(End::Quit),
            Command::Help => self.reply(&format!("214 {OK} See RFC 5321")).await,
            Command::Vrfy | Command::Expn => {
                self.error(&format!("502 {INVALID_COMMAND} VRFY and EXPN are disabled"))
                    .await
            }
            Command::StartTls => self.starttls().await,
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial).await,
        }
    }

    async fn ehlo(&mut self, name: String, esmtp: bool) -> Step {
        self.helo = Some(name);
        self.esmtp = esmtp;
        self.tx = None;
        let host = self.shared.hostname.clone();
        if !esmtp {
            return self.reply(&format!("250 {host}")).await;
        }
        let mut lines = vec![
            host,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.shared.cfg.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            // RFC 3461: NOTIFY, ORCPT, RET and ENVID are kept with the
            // message, honoured in our own DSNs and passed on.
            "DSN".to_string(),
        ];
        // RFC 8689 §2: offered only where the submission itself is
        // protected by TLS.
        if self.tls {
            lines.push("REQUIRETLS".to_string());
        }
        if self.shared.tls.is_some() && !self.tls {
            lines.push("STARTTLS".to_string());
        }
        if self.shared.users.is_some() && self.tls {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        let n = lines.len();
        let mut text = String::new();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            text.push_str(&format!("250{sep}{l}\r\n"));
        }
        self.write(&text).await
    }

    async fn starttls(&mut self) -> Step {
        let Some(acceptor) = self.shared.tls.clone() else {
            return self
                .error(&format!("502 {INVALID_COMMAND} STARTTLS not available"))
                .await;
        };
        if self.tls {
            return self
                .error(&format!("503 {INVALID_COMMAND} TLS already active"))
                .await;
        }
        self.reply(&format!("220 {OK} Ready to start TLS")).await?;
        // RFC 3207 §4.2: anything pipelined after STARTTLS is discarded,
        // never read as if it came over TLS.
        self.buf.clear();
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(End::Hangup);
        };
        match tokio::time::timeout(self.shared.cfg.command_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                self.stream = Stream::Tls(Box::new(tls));
                self.tls = true;
                // RFC 3207 §4.2: forget everything learned before TLS.
                self.helo = None;
                self.tx = None;
                self.user = None;
                Ok(())
            }
            _ => {
                tracing::info!(peer = %self.peer, "STARTTLS handshake with client failed");
                Err(End::Hangup)
            }
        }
    }

    /// Reads one line of an AUTH exchange; `*` cancels (RFC 4954 §4).
    async fn auth_line(&mut self) -> Result<Option<String>, End> {
        let deadline = self.command_deadline();
        match self.read_line(MAX_COMMAND_LINE, deadline).await {
            Line::Done { bytes } => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                Ok((text.trim() != "*").then_some(text))
            }
            Line::TooLong => Ok(None),
            Line::Closed | Line::TimedOut => Err(End::Hangup),
        }
    }

    async fn auth(&mut self, mechanism: String, initial: Option<String>) -> Step {
        let Some(users) = self.shared.users.clone() else {
            return self
                .error(&format!("502 {INVALID_COMMAND} AUTH not available"))
                .await;
        };
        if !self.tls {
            return self
                .error(&format!("538 {ENCRYPTION_REQUIRED_FOR_MECHANISM} Encryption required for requested authentication mechanism"))
                .await;
        }
        if self.user.is_some() {
            return self
                .error(&format!("503 {INVALID_COMMAND} Already authenticated"))
                .await;
        }
        if self.tx.is_some() {
            return self
                .error(&format!(
                    "503 {INVALID_COMMAND} AUTH not permitted during a mail transaction"
                ))
                .await;
        }
        // Checked before any credential is read or any PBKDF2 run: an
        // address that keeps failing costs us nothing while it waits.
        if let Err(wait) = self.shared.auth.check(self.peer.ip()) {
            tracing::warn!(peer = %self.peer, wait = ?wait, "AUTH refused: too many failures from this address (relay.auth_max_failures)");
            return self
                .error(&format!(
                    "454 {TEMP_SECURITY} Too many failed authentications, try again later"
                ))
                .await;
        }
        let cancelled = &format!("501 {PERM_SECURITY} Authentication cancelled");
        let (user, password) = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    // RFC 4954 §4: "=" is an empty initial response.
                    Some(r) if r != "=" => r,
                    _ => {
                        self.reply("334 ").await?;
                        match self.auth_line().await? {
                            Some(r) => r,
                            None => return self.error(cancelled).await,
                        }
                    }
                };
                match super::auth::decode_plain(&response) {
                    Some(up) => up,
                    None => {
                        return self
                            .error(&format!("501 {SYNTAX_ERROR} Cannot decode the response"))
                            .await
                    }
                }
            }
            "LOGIN" => {
                let user = match initial {
                    Some(r) => r,
                    None => {
                        let prompt = super::auth::encode_b64(b"Username:");
                        self.reply(&format!("334 {prompt}")).await?;
                        match self.auth_line().await? {
                            Some(r) => r,
                            None => return self.error(cancelled).await,
                        }
                    }
                };
                let prompt = super::auth::encode_b64(b"Password:");
                self.reply(&format!("334 {prompt}")).await?;
                let pass = match self.auth_line().await? {
                    Some(r) => r,
                    None => return self.error(cancelled).await,
                };
                let user = super::auth::decode_b64(&user).and_then(|u| String::from_utf8(u).ok());
                match (user, super::auth::decode_b64(&pass)) {
                    (Some(u), Some(p)) => (u, p),
                    _ => {
                        return self
                            .error(&format!("501 {SYNTAX_ERROR} Cannot decode the response"))
                            .await
                    }
                }
            }
            _ => {
                return self
                    .error(&format!(
                        "504 {INVALID_ARGUMENTS} Unrecognized authentication type"
                    ))
                    .await
            }
        };
        let name = user.clone();
        let deadline = self.command_deadline();
        let checked = self
            .shared
            .auth
            .run(deadline, move || users.verify(&user, &password))
            .await;
        let Some(ok) = checked else {
            tracing::warn!(peer = %self.peer, user = %name, "AUTH not checked: every password check slot stayed busy (relay.auth_max_parallel)");
            return self
                .error(&format!(
                    "454 {TEMP_SECURITY} Temporary authentication failure, try again later"
                ))
                .await;
        };
        if ok {
            tracing::info!(peer = %self.peer, user = %name, "client authenticated");
            self.user = Some(name);
            self.reply(&format!("235 {SECURITY_OK} Authentication successful"))
                .await
        } else {
            tracing::warn!(peer = %self.peer, user = %name, "authentication failed");
            self.shared.auth.failed(self.peer.ip());
            // Slows password guessing; the error limit ends the session.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            self.error(&format!(
                "535 {AUTH_INVALID} Authentication credentials invalid"
            ))
            .await
        }
    }

    async fn mail(&mut self, from: String, params: MailParams) -> Step {
        if self.helo.is_none() {
            return self
                .error(&format!("503 {INVALID_COMMAND} Send EHLO or HELO first"))
                .await;
        }
        if !self.allowed && self.user.is_none() {
            return self
                .error(&format!("530 {PERM_SECURITY} Authentication required"))
                .await;
        }
        if self.tx.is_some() {
            return self
                .error(&format!("503 {INVALID_COMMAND} Nested MAIL command"))
                .await;
        }
        if params.smtputf8 && !self.esmtp {
            return self
                .error(&format!("503 {INVALID_COMMAND} SMTPUTF8 needs EHLO"))
                .await;
        }
        // RFC 8689 §2 offers REQUIRETLS only after STARTTLS; RFC 3207 §4
        // names 530 for "STARTTLS first", and 5.7.10 is "encryption needed".
        if params.requiretls && !self.tls {
            return self
                .error(&format!(
                    "530 {PERM_ENCRYPTION_NEEDED} REQUIRETLS needs a TLS session: STARTTLS first"
                ))
                .await;
        }
        if params
            .size
            .is_some_and(|s| s > self.shared.cfg.max_message_size)
        {
            return self
                .reply(&format!(
                    "552 {MESSAGE_TOO_BIG} Message size exceeds fixed limit"
                ))
                .await;
        }
        self.tx = Some(Transaction {
            budget: EnvelopeBudget::new(&from),
            sender: from,
            params,
            rcpts: Vec::new(),
            rcpt_params: Vec::new(),
        });
        self.reply(&format!("250 {SENDER_OK} Ok")).await
    }

    async fn rcpt(&mut self, to: String, params: RcptParams) -> Step {
        let max = self.shared.cfg.max_recipients;
        let Some(tx) = &self.tx else {
            return self
                .error(&format!("503 {INVALID_COMMAND} Need MAIL before RCPT"))
                .await;
        };
        if !to.is_ascii() && !tx.params.smtputf8 {
            return self
                .reply(&format!(
                    "553 {NON_ASCII_ADDRESS} Non-ASCII address needs the SMTPUTF8 parameter"
                ))
                .await;
        }
        if tx.rcpts.len() >= max {
            return self
                .reply(&format!("452 {TOO_MANY_RECIPIENTS} Too many recipients"))
                .await;
        }
        let Some((_, domain)) = command::split_mailbox(&to) else {
            // RFC 5321 §4.5.1 postmaster without a domain: we hold no
            // mailboxes, so there is nowhere to deliver it.
            return self
                .reply(&format!(
                    "550 {BAD_MAILBOX} This relay has no local mailboxes"
                ))
                .await;
        };
        if domain.starts_with('[') {
            return self
                .reply(&format!(
                    "550 {BAD_SYSTEM} Address literals are not relayed"
                ))
                .await;
        }
        if crate::policy::normalize_domain(&domain).is_err() || !domain.contains('.') {
            return self
                .reply(&format!("550 {BAD_SYSTEM} Bad destination domain"))
                .await;
        }
        if let Some(tx) = &mut self.tx {
            // An envelope too long to read back after a restart would
            // strand the message: refuse the recipient that does not fit.
            if !tx.budget.add(&to, &params) {
                return self
                    .reply(&format!(
                        "452 {TOO_MANY_RECIPIENTS} Too many recipients for one message"
                    ))
                    .await;
            }
            tx.rcpts.push(to);
            tx.rcpt_params.push(params);
        }
        self.reply(&format!("250 {DESTINATION_OK} Ok")).await
    }

    /// RFC 8689 §4.2.2: `TLS-Required: No` asks that the recipient domain's
    /// MTA-STS and DANE policies not be enforced. Honoured only from a
    /// client that may relay (allowed network or AUTH), unless switched
    /// off; §3 says a REQUIRETLS message ignores the field.
    fn tls_required_no(&self, writer: &mut super::spool::SpoolWriter, requiretls: bool) {
        let outcome = if requiretls {
            "ignored-requiretls"
        } else if !self.shared.cfg.honour_tls_required_no {
            "ignored-disabled"
        } else if !self.allowed && self.user.is_none() {
            "ignored-untrusted"
        } else {
            writer.set_tls_optional();
            "honoured"
        };
        tracing::info!(queue_id = %writer.id(), peer = %self.peer, user = ?self.user, outcome, "message carries TLS-Required: No (RFC 8689)");
        crate::metrics::metrics().relay_tls_required_no(outcome);
    }

    async fn data(&mut self) -> Step {
        let Some(tx) = self.tx.take() else {
            return self
                .error(&format!("503 {INVALID_COMMAND} Need MAIL command"))
                .await;
        };
        if tx.rcpts.is_empty() {
            return self
                .error(&format!("554 {INVALID_COMMAND} No valid recipients"))
                .await;
        }
        let envelope = Envelope {
            id: String::new(),
            sender: tx.sender.clone(),
            recipients: tx.rcpts.clone(),
            arrival: unix_now(),
            client: format!(
                "{} ({})",
                self.peer.ip(),
                self.helo.clone().unwrap_or_default()
            ),
            smtputf8: tx.params.smtputf8,
            ret: tx.params.ret,
            envid: tx.params.envid.clone(),
            rcpt_params: if tx.rcpt_params.iter().all(RcptParams::is_empty) {
                Vec::new()
            } else {
                tx.rcpt_params.clone()
            },
            requiretls: tx.params.requiretls,
            tls_optional: false,
        };
        let writer = match self.shared.queue.spool().create(envelope) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(peer = %self.peer, error = %e, "cannot create a spool file");
                return self.reply(&super::spool::refusal(&e)).await;
            }
        };
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let mut writer = writer;
        let proto = match (self.esmtp, self.tls) {
            (true, true) => "ESMTPS",
            (true, false) => "ESMTP",
            (false, true) => "SMTPS",
            (false, false) => "SMTP",
        };
        let for_clause = match tx.rcpts.as_slice() {
            [one] => format!("\r\n\tfor <{one}>"),
            _ => String::new(),
        };
        let received = format!(
            "Received: from {} ({})\r\n\tby {} (mta-sts-agent) with {proto} id {}{for_clause};\r\n\t{}\r\n",
            self.helo.as_deref().unwrap_or("unknown"),
            self.peer.ip(),
            self.shared.hostname,
            writer.id(),
            crate::smtp::date::rfc5322(unix_now()),
        );
        let max = self.shared.cfg.max_message_size;
        let mut io_error: Option<io::Error> = writer.write(received.as_bytes()).err();
        let mut too_big = false;
        let mut decoder = DataDecoder::new(MAX_DATA_LINE);
        let mut tls_required = crate::smtp::headers::TlsRequiredScan::new();
        let mut out: Vec<u8> = Vec::with_capacity(80 * 1024);
        let mut content: Vec<u8> = Vec::with_capacity(16 * 1024);
        let mut chunk = [0u8; 8192];
        let phase_deadline = Instant::now() + self.shared.cfg.data_deadline;
        loop {
            // Bytes pipelined before the 354 come first.
            if !self.buf.is_empty() {
                content.clear();
                let p = decoder.feed(&self.buf, &mut content);
                self.buf.drain(..p.consumed);
                if writer.size() + (out.len() + content.len()) as u64 > max {
                    too_big = true;
                }
                if !too_big && !decoder.overlong() && io_error.is_none() {
                    tls_required.feed(&content);
                    out.extend_from_slice(&content);
                    if out.len() >= 64 * 1024 {
                        io_error = writer.write(&out).err();
                        out.clear();
                    }
                }
                if p.end {
                    break;
                }
            }
            let silence = Instant::now() + self.shared.cfg.command_timeout;
            let deadline = silence.min(phase_deadline);
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                // Nothing was acknowledged; the spool file goes with `writer`.
                Ok(Ok(0)) | Ok(Err(_)) => return Err(End::Hangup),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {
                    let why = if deadline == phase_deadline {
                        "the data took longer than relay.data_deadline"
                    } else {
                        "silent longer than relay.command_timeout during DATA"
                    };
                    tracing::info!(peer = %self.peer, reason = why, "closing the session");
                    let _ = self
                        .reply(&format!(
                            "421 {BAD_CONNECTION} Timeout during DATA, closing"
                        ))
                        .await;
                    return Err(End::Hangup);
                }
            }
        }
        if decoder.bare_endings() > 0 {
            tracing::info!(peer = %self.peer, bare = decoder.bare_endings(), "bare CR or LF in the data stored as CRLF");
        }
        let overlong = decoder.overlong();
        if too_big {
            return self
                .reply(&format!(
                    "552 {MESSAGE_TOO_BIG} Message size exceeds fixed limit"
                ))
                .await;
        }
        if overlong {
            return self
                .error(&format!(
                    "500 {SYNTAX_ERROR} Message has a line longer than {MAX_DATA_LINE} octets"
                ))
                .await;
        }
        if io_error.is_none() && !out.is_empty() {
            io_error = writer.write(&out).err();
        }
        if tls_required.found() {
            self.tls_required_no(&mut writer, tx.params.requiretls);
        }
        if let Some(e) = io_error {
            tracing::error!(peer = %self.peer, error = %e, "cannot write to the spool");
            return self.reply(&super::spool::refusal(&e)).await;
        }
        let committed = tokio::task::spawn_blocking(move || writer.commit()).await;
        match committed {
            Ok(Ok(msg)) => {
                let id = msg.envelope.id.clone();
                tracing::info!(
                    queue_id = %id,
                    peer = %self.peer,
                    from = %msg.envelope.sender,
                    rcpts = msg.envelope.recipients.len(),
                    size = msg.size,
                    "message accepted"
                );
                self.shared.queue.accept(msg);
                self.reply(&format!("250 {OK} Ok: queued as {id}")).await
            }
            Ok(Err(e)) => {
                tracing::error!(peer = %self.peer, error = %e, "cannot commit the message to the spool");
                self.reply(&super::spool::refusal(&e)).await
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, error = %e, "spool task failed");
                self.reply(&format!(
                    "451 {TEMP_MAIL_SYSTEM} Local error: cannot queue messages now"
                ))
                .await
            }
        }
    }
}
