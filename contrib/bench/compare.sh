#!/usr/bin/env bash
# Side-by-side benchmark: mta-sts-agent vs postfix-mta-sts-resolver 1.5.1
# (the Python plugin most Postfix sites run), plus a constant-reply server
# that marks the ceiling for any socketmap server on this machine.
#
# Run as root on a Debian-like machine (it needs a network namespace):
#     contrib/bench/compare.sh
# Knobs (environment): DURATION=10s  DOMAINS=1000  EXTRA=100000  WORK=/tmp/mta-sts-bench
#
# Both daemons run inside a private network namespace whose resolv.conf
# points at a fixture DNS server on 127.0.0.1:53; fixture HTTPS policy hosts
# listen on 127.0.0.1:443 with a test CA, which both trust through
# SSL_CERT_FILE. Nothing leaves the machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/tmp/mta-sts-bench}
DURATION=${DURATION:-10s}
DOMAINS=${DOMAINS:-1000}
EXTRA=${EXTRA:-100000}
NS=mtastsbench
ANCHOR_VERSION=1.5.1
OURS_PORT=8461
ANCHOR_PORT=8462
NULL_PORT=8469

say() { printf '== %s\n' "$*" >&2; }
in_ns() { ip netns exec "$NS" "$@"; }

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces need it)" >&2; exit 1; }

say "installing what the comparison needs"
need=()
command -v ip >/dev/null || need+=(iproute2)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

say "building mta-sts-agent (release)"
(cd "$ROOT" && cargo build --release --quiet --bin mta-sts-agent --bin mta-sts-bench --example bench_fixtures)
AGENT="$ROOT/target/release/mta-sts-agent"
BENCH="$ROOT/target/release/mta-sts-bench"
FIXTURES="$ROOT/target/release/examples/bench_fixtures"

# fixture-stats too: the start-up wait below watches it appear, and a stale
# one from an earlier run would be read as this run's first counters.
rm -rf "$WORK/state" "$WORK"/*.log "$WORK/fixture-stats"
mkdir -p "$WORK"
if [ ! -x "$WORK/venv/bin/mta-sts-daemon" ]; then
    say "installing postfix-mta-sts-resolver $ANCHOR_VERSION in a venv"
    python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install -q "postfix-mta-sts-resolver==$ANCHOR_VERSION"
fi

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "/etc/netns/$NS"
}
trap cleanup EXIT

say "network namespace $NS with fixture DNS and HTTPS ($DOMAINS + $EXTRA domains)"
ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
in_ns ip link set lo up
mkdir -p "/etc/netns/$NS"
echo "nameserver 127.0.0.1" > "/etc/netns/$NS/resolv.conf"
ip netns exec "$NS" "$FIXTURES" --dns 127.0.0.1:53 --https 127.0.0.1:443 --domains "$DOMAINS" --extra "$EXTRA" \
    --ca-out "$WORK/ca.pem" --stats "$WORK/fixture-stats" 2>"$WORK/fixtures.log" &
PIDS+=($!)
for _ in $(seq 1 600); do [ -s "$WORK/fixture-stats" ] && break; sleep 0.1; done
[ -s "$WORK/fixture-stats" ] || { echo "fixtures did not start; see $WORK/fixtures.log" >&2; exit 1; }
export SSL_CERT_FILE="$WORK/ca.pem"

seq 0 $((DOMAINS - 1)) | sed 's/^/d/; s/$/.bench.test/' > "$WORK/domains.txt"
seq 0 $((EXTRA - 1)) | sed 's/^/r/; s/$/.bench.test/' > "$WORK/extra.txt"

cat > "$WORK/agent.toml" <<TOML
state_dir = "$WORK/state"
[socketmap]
listen = ["127.0.0.1:$OURS_PORT"]
TOML
cat > "$WORK/anchor.yml" <<YAML
host: 127.0.0.1
port: $ANCHOR_PORT
cache:
  type: internal
  options:
    cache_size: $((DOMAINS + EXTRA + 10))
default_zone:
  timeout: 4
YAML

wait_port() { for _ in $(seq 1 100); do in_ns bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

say "starting the daemons"
# `ip netns exec` execs (no fork), so $! is the daemon itself, whose memory
# we read later. (Through the in_ns function it would be a bash subshell.)
ip netns exec "$NS" env RUST_LOG=warn "$AGENT" --config "$WORK/agent.toml" serve 2>"$WORK/ours.log" &
OURS_PID=$!; PIDS+=($OURS_PID)
ip netns exec "$NS" "$WORK/venv/bin/mta-sts-daemon" -c "$WORK/anchor.yml" -v warn 2>"$WORK/anchor.log" &
ANCHOR_PID=$!; PIDS+=($ANCHOR_PID)
ip netns exec "$NS" "$BENCH" null --listen "127.0.0.1:$NULL_PORT" 2>/dev/null &
PIDS+=($!)
wait_port $OURS_PORT && wait_port $ANCHOR_PORT && wait_port $NULL_PORT || { echo "a daemon did not start" >&2; exit 1; }

# load PORT ARGS… → one JSON report
load() { local port=$1; shift; in_ns "$BENCH" load --target "127.0.0.1:$port" --json "$@"; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
herd_fetches() { awk '/^herd/ {print $2}' "$WORK/fixture-stats"; }
# Queries the fixture DNS has received: all, and those with the DO bit.
dns_queries() { awk -v k="$1" '$1 == k {print $2}' "$WORK/fixture-stats"; }
# Per domain, to one decimal, from two counter readings.
per_domain() { python3 -c "print(f'{($2 - $1) / $DOMAINS:.1f}')"; }
# The stats file is rewritten every 200 ms: wait for a reading after now,
# and for background work (DANE lookups, re-checks) to settle.
settle() { sleep 2; }

say "cold start: $DOMAINS distinct uncached domains at concurrency 50"
q0=$(dns_queries dns); s0=$(dns_queries dns_dnssec)
COLD_OURS=$(load $OURS_PORT --domains "$WORK/domains.txt" --connections 50 --requests "$DOMAINS" --timeout 30s)
settle; q1=$(dns_queries dns); s1=$(dns_queries dns_dnssec)
COLD_ANCHOR=$(load $ANCHOR_PORT --domains "$WORK/domains.txt" --connections 50 --requests "$DOMAINS" --timeout 30s)
settle; q2=$(dns_queries dns); s2=$(dns_queries dns_dnssec)
DNS_OURS=$(per_domain "$q0" "$q1"); DNSSEC_OURS=$(per_domain "$s0" "$s1")
DNS_ANCHOR=$(per_domain "$q1" "$q2"); DNSSEC_ANCHOR=$(per_domain "$s1" "$s2")

declare -A WARM
for c in 1 8 64; do
    for t in null:$NULL_PORT ours:$OURS_PORT anchor:$ANCHOR_PORT; do
        say "warm cache, $c connections, ${t%%:*}"
        WARM[${t%%:*}:$c]=$(load "${t##*:}" --domains "$WORK/domains.txt" --connections "$c" --duration "$DURATION")
    done
done

HALF=$(python3 -c "print(round(float('$(field "${WARM[anchor:64]}" per_second)') / 2))")
declare -A OPEN
for t in null:$NULL_PORT ours:$OURS_PORT anchor:$ANCHOR_PORT; do
    say "open loop at $HALF lookups/s (half the anchor's saturation), ${t%%:*}"
    OPEN[${t%%:*}]=$(load "${t##*:}" --domains "$WORK/domains.txt" --connections 16 --duration "$DURATION" --rate "$HALF")
done

say "thundering herd: 500 concurrent lookups of one uncached domain"
h0=$(herd_fetches); load $OURS_PORT --domain herd.bench.test --connections 500 --requests 500 --timeout 30s >/dev/null
sleep 1; h1=$(herd_fetches)
load $ANCHOR_PORT --domain herd.bench.test --connections 500 --requests 500 --timeout 30s >/dev/null
sleep 1; h2=$(herd_fetches)
HERD_OURS=$((h1 - h0)); HERD_ANCHOR=$((h2 - h1))

rss() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
RSS_OURS_1K=$(rss $OURS_PID); RSS_ANCHOR_1K=$(rss $ANCHOR_PID)

say "ours: caching $EXTRA more policies"
FILL=$(load $OURS_PORT --domains "$WORK/extra.txt" --connections 64 --requests "$EXTRA" --timeout 30s)
RSS_OURS_BIG=$(rss $OURS_PID)
CACHED=$(in_ns "$AGENT" --config "$WORK/agent.toml" policy list 2>/dev/null | wc -l)

# The table (Markdown), with the machine it ran on.
{
    echo "| Measurement | null server (ceiling) | mta-sts-agent | postfix-mta-sts-resolver $ANCHOR_VERSION | ours / anchor |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for c in 1 8 64; do
        n=$(field "${WARM[null:$c]}" per_second); o=$(field "${WARM[ours:$c]}" per_second); a=$(field "${WARM[anchor:$c]}" per_second)
        python3 -c "n,o,a=$n,$o,$a; print(f'| warm lookups/s, $c conn | {n:,.0f} | {o:,.0f} ({100*o/n:.0f}% of ceiling) | {a:,.0f} | {o/a:.1f}x |')"
    done
    for c in 1 8 64; do
        o=$(field "${WARM[ours:$c]}" p99_us); a=$(field "${WARM[anchor:$c]}" p99_us); n=$(field "${WARM[null:$c]}" p99_us)
        echo "| warm p99 latency, $c conn (closed loop) | ${n} µs | ${o} µs | ${a} µs | |"
    done
    for q in p50_us p99_us p999_us max_us; do
        n=$(field "${OPEN[null]}" $q); o=$(field "${OPEN[ours]}" $q); a=$(field "${OPEN[anchor]}" $q)
        echo "| ${q%_us} latency at $HALF/s offered (open loop) | ${n} µs | ${o} µs | ${a} µs | |"
    done
    co=$(field "$COLD_OURS" seconds); ca=$(field "$COLD_ANCHOR" seconds)
    python3 -c "o,a=$co,$ca; print(f'| cold start: $DOMAINS new domains, 50 conn | | {o:.2f} s | {a:.2f} s | {a/o:.1f}x faster |')"
    echo "| cold start: DNS queries per domain (of them DNSSEC, for DANE) | | $DNS_OURS ($DNSSEC_OURS) | $DNS_ANCHOR ($DNSSEC_ANCHOR) | |"
    echo "| thundering herd: HTTPS fetches for 500 concurrent lookups | | $HERD_OURS | $HERD_ANCHOR | |"
    echo "| RSS with $DOMAINS policies cached | | ${RSS_OURS_1K} MB | ${RSS_ANCHOR_1K} MB | |"
    echo "| RSS with $((CACHED)) policies cached (ours only) | | ${RSS_OURS_BIG} MB | | |"
} | tee "$WORK/table.md"
echo
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); load generator on the same cores."
echo "Fill of $EXTRA extra domains: $(field "$FILL" seconds) s, errors $(field "$FILL" errors)"
echo "Raw reports and logs: $WORK"
