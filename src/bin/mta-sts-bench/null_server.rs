//! A socketmap server that answers every request with one constant reply and
//! does nothing else: the ceiling for any socketmap server on this machine
//! and load generator.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use mta_sts_agent::socketmap::netstring::{decode, encode};
use mta_sts_agent::socketmap::MAX_REQUEST;

pub const REPLY: &[u8] = b"OK secure match=mx1.example.test servername=hostname";

/// Serves until the listener fails.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let frame = encode(REPLY);
    loop {
        let (mut stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let frame = frame.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(4096);
            let mut out = Vec::with_capacity(4096);
            loop {
                while let Ok(Some((_, used))) = decode(&buf, MAX_REQUEST) {
                    buf.advance(used);
                    out.extend_from_slice(&frame);
                }
                if !out.is_empty() {
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
    }
}
