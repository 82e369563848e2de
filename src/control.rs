//! The local control socket behind `mta-sts-agent policy show|refresh|purge|list`.
//!
//! A unix socket in the state directory, mode 0600 inside a 0700 directory:
//! only the daemon's own user (root, when run as root) can steer it. One JSON
//! request line in, one JSON response line out. When no daemon is running the
//! CLI runs the same [`handle`] on the store directly, so the commands work
//! either way and never disagree.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::config::Config;
use crate::relay::spool::Spool;
use crate::relay::{Queue, QueueView};
use crate::resolver::{Answer, Resolver};
use crate::store::{PolicySource, StoredPolicy};

const MAX_LINE: u64 = 64 * 1024;
/// The whole exchange, a refresh's discovery and fetch included.
const TIMEOUT: Duration = Duration::from_secs(60);
/// From connect to the end of the request line; never pushed back by bytes
/// that trickle in.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served at once; the CLI sends one at a time.
const MAX_CONNECTIONS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Show {
        domain: String,
    },
    Refresh {
        domain: String,
    },
    Purge {
        domain: String,
    },
    List,
    /// The relay queue (`mta-sts-agent queue list`).
    QueueList,
    /// Retry now: one message, or all when `id` is None.
    QueueFlush {
        id: Option<String>,
    },
    /// Remove a message (or `ALL`) without a bounce.
    QueueDelete {
        id: String,
    },
}

/// A policy as the admin commands show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    pub domain: String,
    pub mode: String,
    pub id: String,
    pub mx: Vec<String>,
    pub fetched_at: u64,
    pub expires_at: u64,
    /// "fetched" or "override: <reason>".
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl PolicyView {
    fn of(p: &StoredPolicy, with_body: bool) -> PolicyView {
        PolicyView {
            domain: p.domain.clone(),
            mode: p.policy.mode.to_string(),
            id: p.id.clone(),
            mx: p.policy.mx.iter().map(|m| m.to_string()).collect(),
            fetched_at: p.fetched_at,
            expires_at: p.expires_at(),
            source: match &p.source {
                PolicySource::Fetched => "fetched".to_string(),
                PolicySource::Override { reason } => format!("override: {reason}"),
            },
            body: with_body.then(|| p.body.clone()),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub policies: Vec<PolicyView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<QueueView>,
}

fn failure(e: impl ToString) -> Response {
    Response {
        ok: false,
        error: Some(e.to_string()),
        ..Response::default()
    }
}

fn ok(message: String) -> Response {
    Response {
        ok: true,
        message: Some(message),
        ..Response::default()
    }
}

/// Where queue commands act: the daemon's live queue, or the spool on disk
/// when no daemon runs.
#[derive(Clone)]
pub enum QueueAccess {
    Live(Queue),
    Offline(Spool),
    /// The daemon runs without the relay.
    Disabled,
}

async fn handle_queue(access: &QueueAccess, req: Request) -> Response {
    let ids_of = |views: &[QueueView], id: &str| -> Vec<String> {
        views
            .iter()
            .filter(|v| id == "ALL" || v.id == id)
            .map(|v| v.id.clone())
            .collect()
    };
    match (access, req) {
        (QueueAccess::Disabled, _) => {
            failure("the relay is not enabled in this daemon (set relay.listen in the config)")
        }
        (QueueAccess::Live(q), Request::QueueList) => Response {
            ok: true,
            queue: q.list(),
            ..Response::default()
        },
        (QueueAccess::Live(q), Request::QueueFlush { id }) => {
            let n = q.flush(id.as_deref());
            tracing::info!(messages = n, "queue flushed by the administrator");
            ok(format!("{n} message(s) scheduled for delivery now"))
        }
        (QueueAccess::Live(q), Request::QueueDelete { id }) => {
            let mut n = 0;
            for id in ids_of(&q.list(), &id) {
                match q.delete(&id).await {
                    Ok(true) => n += 1,
                    Ok(false) => {}
                    Err(e) => return failure(e),
                }
            }
            if n == 0 && id != "ALL" {
                return failure(format!("no queued message {id}"));
            }
            ok(format!("{n} message(s) deleted"))
        }
        (QueueAccess::Offline(spool), req) => {
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || offline_queue(&spool, req))
                .await
                .unwrap_or_else(failure)
        }
        (QueueAccess::Live(_), _) => failure("not a queue command"),
    }
}

/// Queue commands on the spool itself (no daemon running).
fn offline_queue(spool: &Spool, req: Request) -> Response {
    let all = match spool.load_all() {
        Ok(loaded) => loaded.messages,
        Err(e) => return failure(format!("cannot read the queue: {e}")),
    };
    let views: Vec<QueueView> = all.iter().map(QueueView::of).collect();
    match req {
        Request::QueueList => Response {
            ok: true,
            queue: views,
            ..Response::default()
        },
        Request::QueueFlush { id } => {
            let mut n = 0;
            for mut m in all {
                if id.as_deref().is_some_and(|id| id != m.envelope.id) {
                    continue;
                }
                for d in m.state.domains.values_mut() {
                    d.next_attempt = 0;
                }
                if let Err(e) = spool.save_state(&m.envelope.id, &m.state) {
                    return failure(format!("cannot update {}: {e}", m.envelope.id));
                }
                n += 1;
            }
            ok(format!(
                "{n} message(s) will be tried as soon as the daemon starts"
            ))
        }
        Request::QueueDelete { id } => {
            let mut n = 0;
            for v in views.iter().filter(|v| id == "ALL" || v.id == id) {
                if let Err(e) = spool.remove(&v.id) {
                    return failure(format!("cannot remove {}: {e}", v.id));
                }
                n += 1;
            }
            if n == 0 && id != "ALL" {
                return failure(format!("no queued message {id}"));
            }
            ok(format!("{n} message(s) deleted"))
        }
        _ => failure("not a queue command"),
    }
}

/// Runs one admin request against a resolver (the daemon's, or the CLI's
/// own) and the relay queue.
pub async fn handle(resolver: &Resolver, queue: &QueueAccess, req: Request) -> Response {
    match req {
        Request::QueueList | Request::QueueFlush { .. } | Request::QueueDelete { .. } => {
            handle_queue(queue, req).await
        }
        Request::Show { domain } => {
            let mut policies = Vec::new();
            if let Some(o) = resolver.override_for(&domain) {
                policies.push(PolicyView::of(&o, false));
            }
            match resolver.cached(&domain).await {
                Ok(Some(p)) => policies.push(PolicyView::of(&p, true)),
                Ok(None) => {}
                Err(e) => return failure(e),
            }
            let message = policies
                .is_empty()
                .then(|| format!("no cached policy for {domain}"));
            Response {
                ok: true,
                message,
                policies,
                ..Response::default()
            }
        }
        Request::Refresh { domain } => match resolver.refresh_now(&domain).await {
            Ok(Answer::Policy(p)) => Response {
                ok: true,
                message: Some(format!("{} policy for {}", p.policy.mode, p.domain)),
                policies: vec![PolicyView::of(&p, true)],
                ..Response::default()
            },
            Ok(Answer::NoPolicy(why)) => Response {
                ok: true,
                message: Some(format!("{domain}: {why}")),
                ..Response::default()
            },
            Err(e) => failure(e),
        },
        Request::Purge { domain } => match resolver.purge(&domain).await {
            Ok(()) => {
                tracing::info!(domain = %domain, "policy purged by administrator");
                Response {
                    ok: true,
                    message: Some(format!("forgot everything cached for {domain}")),
                    ..Response::default()
                }
            }
            Err(e) => failure(e),
        },
        Request::List => match resolver.store().list().await {
            Ok(mut all) => {
                all.sort_by(|a, b| a.domain.cmp(&b.domain));
                Response {
                    ok: true,
                    policies: all.iter().map(|p| PolicyView::of(p, false)).collect(),
                    ..Response::default()
                }
            }
            Err(e) => failure(e),
        },
    }
}

/// `control_socket` from the config, else `<state_dir>/control.sock`.
pub fn socket_path(config: &Config) -> PathBuf {
    config
        .control_socket
        .clone()
        .unwrap_or_else(|| config.state_dir().join("control.sock"))
}

/// Binds the control socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(format!(
                "cannot create the control socket {}: a file that is not a socket is in the way",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path)
        .map_err(|e| format!("cannot create the control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot chmod the control socket {}: {e}", path.display()))?;
    Ok(l)
}

/// Serves admin requests until shutdown.
pub async fn serve(
    listener: UnixListener,
    resolver: Resolver,
    queue: QueueAccess,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::error!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = MAX_CONNECTIONS,
                "control socket busy; request refused"
            );
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    reply(
                        stream,
                        &failure("the daemon is busy with other admin requests; try again"),
                    ),
                )
                .await;
            });
            continue;
        };
        let resolver = resolver.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            if let Err(e) =
                tokio::time::timeout(TIMEOUT, serve_one(stream, &resolver, &queue)).await
            {
                tracing::warn!(error = %e, "control request timed out");
            }
            drop(permit);
        });
    }
}

/// Reads one request line of at most [`MAX_LINE`] bytes within
/// [`READ_TIMEOUT`] of the connection.
async fn read_request<R: tokio::io::AsyncRead + Unpin>(read: R) -> Result<Request, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_LINE));
    match tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => {
            return Err(format!(
                "no complete request line within {} s",
                READ_TIMEOUT.as_secs()
            ))
        }
        Ok(Err(e)) => return Err(format!("cannot read control request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.last() != Some(&b'\n') && line.len() as u64 >= MAX_LINE {
        return Err(format!(
            "control request longer than {} KiB",
            MAX_LINE / 1024
        ));
    }
    let text =
        std::str::from_utf8(&line).map_err(|_| "control request is not UTF-8".to_string())?;
    serde_json::from_str::<Request>(text.trim_end())
        .map_err(|e| format!("bad control request: {e}"))
}

async fn serve_one(stream: UnixStream, resolver: &Resolver, queue: &QueueAccess) {
    let (read, write) = stream.into_split();
    let response = match read_request(read).await {
        Ok(req) => handle(resolver, queue, req).await,
        Err(e) => {
            tracing::warn!(error = %e, "control request refused");
            failure(e)
        }
    };
    reply(write, &response).await;
}

async fn reply<W: tokio::io::AsyncWrite + Unpin>(mut write: W, response: &Response) {
    if let Ok(mut text) = serde_json::to_string(response) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}

/// Sends one request to a running daemon. `Err` with `NotFound` or
/// `ConnectionRefused` means no daemon is listening.
pub async fn request(path: &Path, req: &Request) -> std::io::Result<Response> {
    let stream = UnixStream::connect(path).await?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(req).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(16 * 1024 * 1024));
    tokio::time::timeout(TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "daemon did not answer")
        })??;
    serde_json::from_str(line.trim_end()).map_err(std::io::Error::other)
}
