//! One SMTP client connection over any byte stream (plain TCP or TLS): send a
//! command line, read a reply, every step bounded in time and size.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::reply::{Reply, ReplyBuilder, ReplyError, MAX_LINE};

/// Why an exchange with the server failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmtpError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("connection closed by the server")]
    Closed,
    #[error("I/O error: {0}")]
    Io(String),
    #[error("bad reply: {0}")]
    Reply(#[from] ReplyError),
    /// A command line containing CR or LF (would smuggle a second command).
    #[error("refusing to send a command containing CR or LF")]
    BadCommand,
}

/// The reply to EHLO and the extensions it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ehlo {
    pub reply: Reply,
    /// One per line after the first, keyword upper-cased: `STARTTLS`,
    /// `SIZE 10240000`, …
    pub extensions: Vec<String>,
}

impl Ehlo {
    fn from_reply(reply: Reply) -> Ehlo {
        let extensions = reply
            .lines
            .iter()
            .skip(1)
            .map(|l| {
                let mut parts = l.splitn(2, ' ');
                let keyword = parts.next().unwrap_or("").to_ascii_uppercase();
                match parts.next() {
                    Some(params) => format!("{keyword} {params}"),
                    None => keyword,
                }
            })
            .collect();
        Ehlo { reply, extensions }
    }

    /// True when the extension keyword is listed (case-insensitive).
    pub fn has(&self, keyword: &str) -> bool {
        self.extensions.iter().any(|e| {
            e.split(' ')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }
}

/// A client connection. Reads are buffered here, so before a TLS upgrade the
/// caller must check [`has_buffered`](Self::has_buffered): bytes the server
/// sent ahead of the handshake must not be read as if they came over TLS
/// (the STARTTLS command-injection flaw, CVE-2011-0411 and kin).
pub struct SmtpConn<S> {
    stream: S,
    buf: Vec<u8>,
    timeout: Duration,
}

/// How a `STARTTLS` ended.
pub enum StartTls<S> {
    /// `220`: the stream, with nothing read past the reply, for the handshake.
    Ready(S, Reply),
    /// Any other reply; the session is still there (for `QUIT`).
    Refused(Reply, SmtpConn<S>),
    /// Bytes followed the `220` before the handshake: the session must be
    /// dropped, never upgraded.
    Injected(Reply),
    /// The command could not be sent or its reply read.
    Failed(SmtpError),
}

impl<S> std::fmt::Debug for SmtpConn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConn")
            .field("buffered", &self.buf.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpConn<S> {
    /// `timeout` bounds each reply read and each command write.
    pub fn new(stream: S, timeout: Duration) -> SmtpConn<S> {
        SmtpConn {
            stream,
            buf: Vec::new(),
            timeout,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// True when bytes past the last reply have been read from the stream.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The stream and any bytes read past the last reply.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.stream, self.buf)
    }

    /// One line without its line ending (CRLF, or a bare LF from a sloppy
    /// server), at most [`MAX_LINE`] bytes.
    async fn read_line(&mut self) -> Result<Vec<u8>, SmtpError> {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > MAX_LINE {
                    return Err(ReplyError::LineTooLong.into());
                }
                return Ok(line);
            }
            // +2 for the CRLF the line may still be waiting for.
            if self.buf.len() > MAX_LINE + 2 {
                return Err(ReplyError::LineTooLong.into());
            }
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Err(SmtpError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(SmtpError::Io(e.to_string())),
            }
        }
    }

    /// Reads one complete reply within the timeout.
    pub async fn read_reply(&mut self) -> Result<Reply, SmtpError> {
        let timeout = self.timeout;
        let read = async {
            let mut builder = ReplyBuilder::default();
            loop {
                let line = self.read_line().await?;
                if let Some(reply) = builder.push(&line)? {
                    return Ok(reply);
                }
            }
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(SmtpError::Timeout(timeout)),
        }
    }

    /// Writes `line` plus CRLF within the timeout.
    pub async fn send(&mut self, line: &str) -> Result<(), SmtpError> {
        if line.contains(['\r', '\n']) {
            return Err(SmtpError::BadCommand);
        }
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write_raw(&bytes).await
    }

    /// Writes bytes as they are (a DATA body), within the timeout.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), SmtpError> {
        let timeout = self.timeout;
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SmtpError::Io(e.to_string())),
            Err(_) => Err(SmtpError::Timeout(timeout)),
        }
    }

    /// Sends a command and reads its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, SmtpError> {
        self.send(line).await?;
        self.read_reply().await
    }

    /// `EHLO name` and the extensions of a positive reply. A negative reply
    /// is returned as such (extensions empty), not as an error.
    pub async fn ehlo(&mut self, name: &str) -> Result<Ehlo, SmtpError> {
        let reply = self.command(&format!("EHLO {name}")).await?;
        if reply.is_positive() {
            Ok(Ehlo::from_reply(reply))
        } else {
            Ok(Ehlo {
                reply,
                extensions: Vec::new(),
            })
        }
    }

    /// `STARTTLS`, and the plaintext stream to run the TLS handshake on
    /// after a `220`. The one place that refuses bytes the server sent
    /// after its `220` and before the handshake: read later, they would
    /// pass for data sent over TLS (CVE-2011-0411 and kin).
    pub async fn starttls(mut self) -> StartTls<S> {
        let reply = match self.command("STARTTLS").await {
            Ok(r) => r,
            Err(e) => return StartTls::Failed(e),
        };
        if reply.code != 220 {
            return StartTls::Refused(reply, self);
        }
        if self.has_buffered() {
            return StartTls::Injected(reply);
        }
        StartTls::Ready(self.stream, reply)
    }

    /// Sends QUIT and waits briefly for the reply; errors are ignored (the
    /// server may just close).
    pub async fn quit(&mut self) {
        let saved = self.timeout;
        self.timeout = saved.min(Duration::from_secs(2));
        let _ = self.command("QUIT").await;
        self.timeout = saved;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn conn_with(server_bytes: &[u8]) -> SmtpConn<tokio::io::DuplexStream> {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        server.write_all(server_bytes).await.unwrap();
        // Keep the server half open for the test's duration.
        std::mem::forget(server);
        SmtpConn::new(client, Duration::from_millis(300))
    }

    #[tokio::test]
    async fn reads_replies_and_keeps_extra_bytes() {
        let mut c = conn_with(b"220 hi\r\n250-mx\r\n250-STARTTLS\r\n250 SIZE 100\r\nextra").await;
        assert_eq!(c.read_reply().await.unwrap().code, 220);
        let reply = c.read_reply().await.unwrap();
        let ehlo = Ehlo::from_reply(reply);
        assert!(ehlo.has("starttls"));
        assert!(ehlo.has("SIZE"));
        assert!(!ehlo.has("PIPELINING"));
        assert!(c.has_buffered());
    }

    #[tokio::test]
    async fn bare_lf_is_accepted() {
        let mut c = conn_with(b"220 sloppy\n").await;
        assert_eq!(c.read_reply().await.unwrap().first_line(), "sloppy");
    }

    #[tokio::test]
    async fn endless_line_is_refused() {
        let junk = vec![b'2'; 5000];
        let mut c = conn_with(&junk).await;
        assert_eq!(
            c.read_reply().await,
            Err(SmtpError::Reply(ReplyError::LineTooLong))
        );
    }

    #[tokio::test]
    async fn silence_times_out() {
        let mut c = conn_with(b"").await;
        assert!(matches!(c.read_reply().await, Err(SmtpError::Timeout(_))));
    }

    #[tokio::test]
    async fn closed_connection() {
        let (client, server) = tokio::io::duplex(1024);
        drop(server);
        let mut c = SmtpConn::new(client, Duration::from_secs(1));
        assert_eq!(c.read_reply().await, Err(SmtpError::Closed));
    }

    #[tokio::test]
    async fn command_injection_refused() {
        let mut c = conn_with(b"").await;
        assert_eq!(
            c.send("RCPT TO:<a@b>\r\nDATA").await,
            Err(SmtpError::BadCommand)
        );
    }
}
