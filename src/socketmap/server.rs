//! Listeners and the accept loop. Binding is separate from serving so the
//! daemon can bind first and drop privileges after.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::{Config, ListenAddr};
use crate::resolver::Resolver;

use super::connection::{self, Handler};

pub struct Listeners {
    tcp: Vec<TcpListener>,
    unix: Vec<(UnixListener, String)>,
}

impl Listeners {
    /// The bound TCP addresses (useful with port 0).
    pub fn tcp_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

/// Binds every `socketmap.listen` address.
pub async fn bind(config: &Config) -> Result<Listeners, String> {
    // The per-map series exist from the moment clients can connect, so a
    // scrape racing the start of `serve` already sees them.
    for map in config.socketmap.maps.keys() {
        crate::metrics::metrics().init_map(map);
    }
    if let Some(passed) = systemd_listeners()? {
        tracing::info!("using the sockets passed by systemd; socketmap.listen is ignored");
        return Ok(passed);
    }
    let mut out = Listeners {
        tcp: Vec::new(),
        unix: Vec::new(),
    };
    for addr in config.listen_addrs().map_err(|e| e.to_string())? {
        match addr {
            ListenAddr::Tcp(a) => {
                let l = TcpListener::bind(a)
                    .await
                    .map_err(|e| format!("cannot listen on {a} (socketmap.listen): {e}"))?;
                out.tcp.push(l);
            }
            ListenAddr::Unix(path) => {
                let l = bind_unix(&path, config)?;
                out.unix.push((l, path.display().to_string()));
            }
        }
    }
    Ok(out)
}

/// Sockets handed over by systemd socket activation (`LISTEN_FDS`, starting
/// at fd 3), if they are meant for this process.
fn systemd_listeners() -> Result<Option<Listeners>, String> {
    use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};
    use std::os::fd::FromRawFd;

    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !for_us || count <= 0 {
        return Ok(None);
    }
    let mut out = Listeners {
        tcp: Vec::new(),
        unix: Vec::new(),
    };
    for fd in 3..3 + count {
        let addr: SockaddrStorage =
            getsockname(fd).map_err(|e| format!("socket {fd} passed by systemd: {e}"))?;
        match addr.family() {
            Some(AddressFamily::Unix) => {
                // SAFETY: systemd passes us ownership of fds 3.. (sd_listen_fds(3)),
                // and each is taken exactly once.
                let std = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
                std.set_nonblocking(true).map_err(|e| e.to_string())?;
                let l = UnixListener::from_std(std).map_err(|e| e.to_string())?;
                out.unix.push((l, format!("systemd socket {fd}")));
            }
            Some(AddressFamily::Inet) | Some(AddressFamily::Inet6) => {
                // SAFETY: as above.
                let std = unsafe { std::net::TcpListener::from_raw_fd(fd) };
                std.set_nonblocking(true).map_err(|e| e.to_string())?;
                out.tcp
                    .push(TcpListener::from_std(std).map_err(|e| e.to_string())?);
            }
            other => {
                return Err(format!(
                    "socket {fd} passed by systemd has unsupported family {other:?}"
                ))
            }
        }
    }
    Ok(Some(out))
}

fn bind_unix(path: &Path, config: &Config) -> Result<UnixListener, String> {
    // A socket left by an earlier run would make bind fail; remove it, but
    // never anything that is not a socket.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        } else {
            return Err(format!(
                "cannot listen on unix:{}: a file that is not a socket is in the way",
                path.display()
            ));
        }
    }
    let l = UnixListener::bind(path).map_err(|e| {
        format!(
            "cannot listen on unix:{} (socketmap.listen): {e}",
            path.display()
        )
    })?;
    let mode = config.unix_mode().map_err(|e| e.to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {:o} unix:{}: {e}", mode, path.display()))?;
    let uid = match &config.socketmap.unix_owner {
        Some(owner) => Some(lookup_user(owner)?),
        None => None,
    };
    let gid = match &config.socketmap.unix_group {
        Some(group) => Some(lookup_group(group)?),
        None => None,
    };
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid).map_err(|e| {
            format!(
                "cannot chown unix:{} (socketmap.unix_owner/unix_group): {e}",
                path.display()
            )
        })?;
    }
    Ok(l)
}

fn lookup_user(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(format!("socketmap.unix_owner: no user named '{name}'")),
    }
}

fn lookup_group(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(format!("socketmap.unix_group: no group named '{name}'")),
    }
}

/// Serves until `shutdown` turns true, then lets open connections finish
/// their current request.
pub async fn serve(
    listeners: Listeners,
    resolver: Resolver,
    config: &Config,
    shutdown: watch::Receiver<bool>,
) {
    let handler = Arc::new(Handler {
        resolver,
        maps: config.socketmap.maps.clone(),
        idle_timeout: config.socketmap.idle_timeout,
    });
    for map in config.socketmap.maps.keys() {
        crate::metrics::metrics().init_map(map);
    }
    let slots = Arc::new(Semaphore::new(config.socketmap.max_connections));
    let mut accept_loops = JoinSet::new();
    let all = listeners.tcp.into_iter().map(Listener::Tcp).chain(
        listeners
            .unix
            .into_iter()
            .map(|(l, p)| Listener::Unix(l, p)),
    );
    for listener in all {
        tracing::info!(listen = %listener.describe(), "socketmap server listening");
        accept_loops.spawn(accept_loop(
            listener,
            handler.clone(),
            slots.clone(),
            config.socketmap.request_timeout,
            shutdown.clone(),
        ));
    }
    while accept_loops.join_next().await.is_some() {}
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, String),
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp".into()),
            Listener::Unix(_, path) => format!("unix:{path}"),
        }
    }

    async fn accept(&self) -> std::io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => l
                .accept()
                .await
                .map(|(s, a)| (Stream::Tcp(s), a.to_string())),
            Listener::Unix(l, path) => l
                .accept()
                .await
                .map(|(s, _)| (Stream::Unix(s), format!("unix:{path}"))),
        }
    }
}

async fn accept_loop(
    listener: Listener,
    handler: Arc<Handler>,
    slots: Arc<Semaphore>,
    request_timeout: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut warned_full = false;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::error!(error = %e, "socketmap accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // The slot is taken after accept, so an idle listener never holds
        // one. At the limit this connection waits for a slot (and clients
        // behind it wait in the kernel's backlog) instead of being dropped.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                warned_full = false;
                p
            }
            Err(_) => {
                if !warned_full {
                    tracing::warn!(peer = %peer, "socketmap connection limit reached; new connections wait (raise socketmap.max_connections?)");
                    warned_full = true;
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = shutdown.changed() => break,
                }
            }
        };
        let handler = handler.clone();
        let sd = shutdown.clone();
        connections.spawn(async move {
            let closed = match stream {
                Stream::Tcp(s) => {
                    let _ = s.set_nodelay(true);
                    connection::run(s, handler, request_timeout, &peer, sd).await
                }
                Stream::Unix(s) => connection::run(s, handler, request_timeout, &peer, sd).await,
            };
            tracing::debug!(peer = %peer, reason = ?closed, "socketmap connection closed");
            drop(permit);
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
    // Shutdown: stop accepting at once, then give open connections a moment
    // to finish their request.
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}
