//! The socketmap load generator.
//!
//! C connections each send lookups back to back (closed loop), or at a fixed
//! offered rate split over the connections (open loop). In open loop the
//! latency of a request counts from when it *should* have been sent, so a
//! slow server cannot hide its stalls by slowing the generator down
//! (coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::TcpStream;

use mta_sts_agent::socketmap::netstring::{decode, encode};
use mta_sts_agent::socketmap::MAX_REPLY;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub target: SocketAddr,
    pub map: String,
    pub domains: Vec<String>,
    pub connections: usize,
    /// Stop after this long (closed or open loop)…
    pub duration: Option<Duration>,
    /// …or after this many lookups in all.
    pub requests: Option<u64>,
    /// Offered lookups per second over all connections (open loop).
    pub rate: Option<f64>,
    /// A reply slower than this counts as an error and the connection is
    /// reopened.
    pub timeout: Duration,
    /// Process whose resident memory to report.
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub lookups: u64,
    pub errors: u64,
    /// Replies by their first word (OK, NOTFOUND, TEMP, PERM).
    pub replies: BTreeMap<String, u64>,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Resident memory of `pid` at the end, and its peak (VmHWM), in KiB.
    pub rss_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
}

impl Report {
    pub fn one_line(&self) -> String {
        format!(
            "{} lookups in {:.2}s = {:.0}/s, errors {}, latency p50 {}us p99 {}us p99.9 {}us max {}us{}",
            self.lookups,
            self.seconds,
            self.per_second,
            self.errors,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            match (self.rss_kib, self.peak_rss_kib) {
                (Some(r), Some(p)) => format!(", rss {r} KiB (peak {p} KiB)"),
                _ => String::new(),
            }
        )
    }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

struct Shared {
    remaining: Option<AtomicU64>,
    stop: AtomicBool,
    /// All connections walk the domain list together, so N requests over N
    /// domains look up each exactly once (the cold-start measurement).
    next: AtomicU64,
}

impl Shared {
    /// Takes one request from the budget and returns the index of the
    /// domain to ask for; None when the run is over.
    fn take(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(r) = &self.remaining {
            r.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .ok()?;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed))
    }
}

struct Tally {
    hist: Histogram<u64>,
    errors: u64,
    replies: BTreeMap<String, u64>,
}

/// Runs the load and returns the report. Blocking: one OS thread per
/// connection, with blocking sockets and `nanosleep` pacing, which is precise
/// to tens of microseconds where an async timer wheel rounds to a
/// millisecond — too coarse to measure sub-millisecond latencies in open
/// loop.
pub fn run(opts: LoadOptions) -> Result<Report, String> {
    if opts.domains.is_empty() {
        return Err("no domains to look up".into());
    }
    if opts.connections == 0 {
        return Err("connections must be at least 1".into());
    }
    if opts.duration.is_none() && opts.requests.is_none() {
        return Err("give a duration or a number of requests".into());
    }
    let shared = Arc::new(Shared {
        remaining: opts.requests.map(AtomicU64::new),
        stop: AtomicBool::new(false),
        next: AtomicU64::new(0),
    });
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        opts.domains
            .iter()
            .map(|d| encode(format!("{} {d}", opts.map).as_bytes()))
            .collect(),
    );
    let started = Instant::now();
    let mut threads = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        let (shared, requests, o) = (shared.clone(), requests.clone(), opts.clone());
        let t = std::thread::Builder::new()
            .name(format!("load-{i}"))
            .spawn(move || connection(i, o, shared, requests, started))
            .map_err(|e| format!("cannot start a load thread: {e}"))?;
        threads.push(t);
    }
    if let Some(d) = opts.duration {
        std::thread::sleep(d);
        shared.stop.store(true, Ordering::Relaxed);
    }
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut errors = 0;
    let mut replies = BTreeMap::new();
    for t in threads {
        let t = t.join().map_err(|_| "a load thread panicked".to_string())?;
        hist.add(&t.hist).map_err(|e| e.to_string())?;
        errors += t.errors;
        for (k, v) in t.replies {
            *replies.entry(k).or_insert(0) += v;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let lookups = hist.len();
    let mem = opts.pid.and_then(rss_kib);
    Ok(Report {
        lookups,
        errors,
        replies,
        seconds,
        per_second: lookups as f64 / seconds.max(1e-9),
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        rss_kib: mem.map(|m| m.0),
        peak_rss_kib: mem.map(|m| m.1),
    })
}

fn connection(
    index: usize,
    opts: LoadOptions,
    shared: Arc<Shared>,
    requests: Arc<Vec<Vec<u8>>>,
    started: Instant,
) -> Tally {
    let mut tally = Tally {
        hist: Histogram::<u64>::new(3).expect("histogram with 3 significant figures"),
        errors: 0,
        replies: BTreeMap::new(),
    };
    // Open loop: this connection's share of the offered rate, staggered so
    // connections do not fire in lockstep.
    let interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(opts.connections as f64 / r.max(1e-9)));
    let mut next_send = started
        + interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(index as f64 / opts.connections as f64)
        });
    let mut stream: Option<TcpStream> = None;
    let mut buf = BytesMut::with_capacity(4096);
    while let Some(k) = shared.take() {
        let intended = match interval {
            Some(i) => {
                let now = Instant::now();
                if next_send > now {
                    std::thread::sleep(next_send - now);
                }
                let t = next_send;
                next_send += i;
                t
            }
            None => Instant::now(),
        };
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if stream.is_none() {
            match TcpStream::connect_timeout(&opts.target, opts.timeout) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(opts.timeout));
                    let _ = s.set_write_timeout(Some(opts.timeout));
                    buf.clear();
                    stream = Some(s);
                }
                Err(_) => {
                    tally.errors += 1;
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let req = &requests[(k % requests.len() as u64) as usize];
        match exchange(s, req, &mut buf) {
            Ok(word) => {
                let us = intended.elapsed().as_micros().max(1) as u64;
                let _ = tally.hist.record(us);
                *tally.replies.entry(word).or_insert(0) += 1;
            }
            Err(_) => {
                tally.errors += 1;
                stream = None;
            }
        }
    }
    tally
}

/// Sends one request and reads one netstring reply; returns its first word.
fn exchange(s: &mut TcpStream, req: &[u8], buf: &mut BytesMut) -> std::io::Result<String> {
    s.write_all(req)?;
    let mut chunk = [0u8; 4096];
    loop {
        match decode(buf, MAX_REPLY) {
            Ok(Some((range, used))) => {
                let word = buf[range]
                    .split(|&b| b == b' ')
                    .next()
                    .map(|w| String::from_utf8_lossy(w).into_owned())
                    .unwrap_or_default();
                buf.advance(used);
                return Ok(word);
            }
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
