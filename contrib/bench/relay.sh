#!/usr/bin/env bash
# Relay benchmark: mta-sts-agent's smart-host relay side by side with
# Debian's Postfix relaying the same load (issue 13).
#
# Run as root on a Debian-like machine (it needs a network namespace):
#     contrib/bench/relay.sh
# Knobs (environment): MESSAGES=2000  SIZE=1024  SESSIONS=8  LIMIT=600 (seconds
# to wait for a queue to empty)  WORK=/tmp/mta-sts-relay-bench
#
# The load: MESSAGES messages of SIZE bytes from Postfix's smtp-source over
# SESSIONS sessions (several messages per session), to the relay under test.
# Two destinations, each run once per relay:
#   plain  bob@sink.test, MX mx.sink.test (127.0.0.2:25): Postfix's smtp-sink;
#          no MTA-STS policy, no STARTTLS.
#   tls    bob@tls.test, MX mx.tls.test (127.0.0.3:25): a second Postfix
#          instance with STARTTLS (a certificate from a test CA made at run
#          time) and a `discard` transport; an MTA-STS enforce policy for
#          mx.tls.test, so the relay must verify the certificate. The Postfix
#          relay gets the same rule from a TLS policy table
#          (`secure match=mx.tls.test`).
# Everything runs in a private network namespace whose resolv.conf points at
# the fixture DNS on 127.0.0.1:53 (fixture HTTPS policy hosts on 127.0.0.1:443).
# Nothing leaves the machine.
#
# Reported per run: "accepted all" (smtp-source's run, until the relay has
# taken every message), "end to end" (until the relay's queue is empty) and
# the SMTP sessions the receiving side saw.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/tmp/mta-sts-relay-bench}
MESSAGES=${MESSAGES:-2000}
SIZE=${SIZE:-1024}
SESSIONS=${SESSIONS:-8}
LIMIT=${LIMIT:-600}
NS=mtastsrelay
OURS_ADDR=127.0.0.1:10025
POSTFIX_ADDR=127.0.0.4:25

say() { printf '== %s\n' "$*" >&2; }
in_ns() { ip netns exec "$NS" "$@"; }

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces need it)" >&2; exit 1; }

say "installing what the benchmark needs"
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v python3 >/dev/null || need+=(python3)
if [ ! -x /usr/sbin/postfix ] || [ ! -x /usr/sbin/smtp-source ] || [ ! -x /usr/sbin/smtp-sink ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    need+=(postfix)
fi
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
PF_VERSION=$(postconf -dh mail_version)

say "building mta-sts-agent (release)"
(cd "$ROOT" && cargo build --release --quiet --bin mta-sts-agent --example bench_fixtures)
AGENT="$ROOT/target/release/mta-sts-agent"
FIXTURES="$ROOT/target/release/examples/bench_fixtures"

PIDS=()
# Postfix instances started (config directories), stopped at exit.
INSTANCES=()
stop_postfix() {
    local dir=$1 i e left
    in_ns postfix -c "$dir" stop >/dev/null 2>&1 || true
    # Nothing of that instance may survive: find its processes by their
    # MAIL_CONFIG and end them by pid.
    for i in $(seq 1 50); do
        left=()
        for e in /proc/[0-9]*/environ; do
            if tr '\0' '\n' 2>/dev/null <"$e" | grep -qx "MAIL_CONFIG=$dir"; then
                left+=("$(basename "$(dirname "$e")")")
            fi
        done
        [ ${#left[@]} -eq 0 ] && return 0
        if [ "$i" -gt 30 ]; then kill "${left[@]}" 2>/dev/null || true; fi
        sleep 0.1
    done
}
cleanup() {
    for d in "${INSTANCES[@]}"; do stop_postfix "$d"; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "/etc/netns/$NS"
}
trap cleanup EXIT

rm -rf "$WORK"
mkdir -p "$WORK"

say "network namespace $NS with fixture DNS and HTTPS"
ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
in_ns ip link set lo up
# Postfix's inet_interfaces wants addresses an interface really has.
for a in 2 3 4; do in_ns ip addr add "127.0.0.$a/32" dev lo; done
mkdir -p "/etc/netns/$NS"
echo "nameserver 127.0.0.1" >"/etc/netns/$NS/resolv.conf"
ip netns exec "$NS" "$FIXTURES" --dns 127.0.0.1:53 --https 127.0.0.1:443 --domains 0 --extra 0 \
    --ca-out "$WORK/ca.pem" --stats "$WORK/fixture-stats" --relay-certs "$WORK" 2>"$WORK/fixtures.log" &
PIDS+=($!)
for _ in $(seq 1 600); do [ -s "$WORK/fixture-stats" ] && break; sleep 0.1; done
[ -s "$WORK/fixture-stats" ] || { echo "fixtures did not start; see $WORK/fixtures.log" >&2; exit 1; }

# A Postfix instance in DIR: smtpd on LISTEN, retries within seconds, then
# the lines of $3 (main.cf settings of its role).
postfix_instance() {
    local dir=$1 listen=$2 extra=$3
    mkdir -p "$dir/queue" "$dir/data"
    cat >"$dir/main.cf" <<CF
compatibility_level = 3.6
myhostname = ${dir##*/}.bench.test
mydomain = bench.test
myorigin = \$myhostname
mydestination =
inet_interfaces = ${listen%:*}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
queue_directory = $dir/queue
data_directory = $dir/data
alias_maps =
alias_database =
smtputf8_enable = no
maillog_file = $dir/maillog
maillog_file_prefixes = $WORK
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s
$extra
CF
    cat >"$dir/master.cf" <<CF
$listen inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
CF
    chown postfix: "$dir/data"
    # postmap/postfix stall when main.cf is less than a second old.
    touch -d '1 hour ago' "$dir/main.cf" "$dir/master.cf"
    in_ns postfix -c "$dir" start >/dev/null 2>&1 || { echo "Postfix in $dir did not start; see $dir/maillog" >&2; exit 1; }
    INSTANCES+=("$dir")
}

say "receiving side: smtp-sink on 127.0.0.2:25, Postfix $PF_VERSION with STARTTLS and discard on 127.0.0.3:25"
ip netns exec "$NS" smtp-sink -u postfix -c 127.0.0.2:25 256 >"$WORK/sink.out" 2>"$WORK/sink.err" &
PIDS+=($!)
postfix_instance "$WORK/mx" 127.0.0.3:25 "default_transport = discard
relay_transport = discard
smtpd_tls_security_level = may
smtpd_tls_cert_file = $WORK/mx.tls.test.crt
smtpd_tls_key_file = $WORK/mx.tls.test.key
smtpd_tls_session_cache_database = btree:\${data_directory}/smtpd_scache"

say "relays: mta-sts-agent on $OURS_ADDR, Postfix $PF_VERSION on $POSTFIX_ADDR"
cat >"$WORK/agent.toml" <<TOML
state_dir = "$WORK/ours-state"
[fetch]
ca_file = "$WORK/ca.pem"
[socketmap]
listen = ["127.0.0.1:18461"]
[relay]
listen = ["$OURS_ADDR"]
hostname = "relay.bench.test"
TOML
ip netns exec "$NS" env RUST_LOG=warn "$AGENT" --config "$WORK/agent.toml" serve 2>"$WORK/ours.log" &
PIDS+=($!)
echo "tls.test secure match=mx.tls.test" >"$WORK/tls_policy"
postfix_instance "$WORK/out" "$POSTFIX_ADDR" "smtp_tls_security_level = may
smtp_tls_CAfile = $WORK/ca.pem
smtp_tls_policy_maps = texthash:$WORK/tls_policy
smtp_tls_session_cache_database = btree:\${data_directory}/smtp_scache"

wait_port() { for _ in $(seq 1 100); do in_ns bash -c "exec 3<>/dev/tcp/${1%:*}/${1##*:}" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
for a in $OURS_ADDR $POSTFIX_ADDR 127.0.0.2:25 127.0.0.3:25; do
    wait_port "$a" || { echo "nothing listens on $a; see $WORK/*.log and $WORK/*/maillog" >&2; exit 1; }
done

# Files still queued by one relay.
queued_ours() { find "$WORK/ours-state/queue/incoming" "$WORK/ours-state/queue/messages" -type f 2>/dev/null | wc -l; }
queued_postfix() { find "$WORK/out/queue"/{maildrop,incoming,active,deferred,hold} -type f 2>/dev/null | wc -l; }
# Sessions the receiving side has seen so far.
# smtp-sink's own counters reach its (file) stdout only when its buffer
# fills, so the plaintext side is counted by the namespace's TCP stack:
# passive opens, of which run() takes off the SESSIONS that smtp-source
# opens to the relay under test (DNS is UDP; the policy fetch of tls.test
# is not in a plain run).
sessions_plain() { in_ns awk '/^Tcp:/ && n++ {print $7}' /proc/net/snmp; }
sessions_tls() { grep -c 'smtpd\[[0-9]*\]: connect from' "$WORK/mx/maillog" 2>/dev/null || true; }
now() { date +%s.%N; }

declare -A ACCEPT E2E SESS
# run RELAY KIND ADDR DOMAIN
run() {
    local relay=$1 kind=$2 addr=$3 domain=$4
    say "$relay, $kind: $MESSAGES x $SIZE bytes over $SESSIONS sessions to bob@$domain"
    local s0 t0 t1 t2
    s0=$("sessions_$kind")
    t0=$(now)
    in_ns smtp-source -d -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -M client.bench.test \
        -f alice@client.bench.test -t "bob@$domain" "$addr"
    t1=$(now)
    local waited=0
    while [ "$("queued_$relay")" -gt 0 ]; do
        sleep 0.05
        waited=$((waited + 1))
        if [ $waited -gt $((LIMIT * 20)) ]; then
            echo "$relay: queue not empty after ${LIMIT}s; see $WORK" >&2
            exit 1
        fi
    done
    t2=$(now)
    # Let the receiving side log the last sessions' end.
    sleep 1
    ACCEPT[$relay:$kind]=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    E2E[$relay:$kind]=$(python3 -c "print(f'{$t2 - $t0:.2f}')")
    local own=0
    [ "$kind" = plain ] && own=$SESSIONS
    SESS[$relay:$kind]=$(($("sessions_$kind") - s0 - own))
}

run ours plain "$OURS_ADDR" sink.test
run postfix plain "$POSTFIX_ADDR" sink.test
run ours tls "$OURS_ADDR" tls.test
run postfix tls "$POSTFIX_ADDR" tls.test

rate() { python3 -c "print(f'{$MESSAGES / $1:,.0f}')"; }
{
    echo "| $MESSAGES x $SIZE B, $SESSIONS sessions | mta-sts-agent | Postfix $PF_VERSION | ours / Postfix (rate) |"
    echo "| --- | ---: | ---: | ---: |"
    for kind in plain tls; do
        label=$([ $kind = plain ] && echo "plaintext to smtp-sink" || echo "STARTTLS to Postfix (discard)")
        for m in ACCEPT E2E; do
            declare -n t=$m
            o=${t[ours:$kind]}; p=${t[postfix:$kind]}
            what=$([ $m = ACCEPT ] && echo "accepted all" || echo "end to end (queue empty)")
            echo "| $label: $what | ${o} s ($(rate "$o")/s) | ${p} s ($(rate "$p")/s) | $(python3 -c "print(f'{$p / $o:.2f}x')") |"
        done
        echo "| $label: sessions at the receiver | ${SESS[ours:$kind]} | ${SESS[postfix:$kind]} | |"
    done
} | tee "$WORK/table.md"
echo
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); load generator and receivers on the same cores."
echo "Logs: $WORK (ours.log, out/maillog, mx/maillog, sink.out)"
