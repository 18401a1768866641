#!/usr/bin/env bash
# Issue 16 benchmark: concurrency at scale. SCALE_SESSIONS recorded sessions over SCALE_CONNS vendor
# connections (SCALE_VENDORS vendors, each with a grant), started SCALE_BURST at a time (the first burst all
# on one connection, as OpenSSH's ControlMaster does), SCALE_STREAMERS of them streaming output; then, with
# all of them live, chaperone's RSS and the echo round trip of a keystroke through chaperone vs directly to
# the same sshd, and through a bare TCP relay (bench/relay.rs) in front of it: what a second hop alone costs.
# Prints session-start p50/p99, RSS, echo p50/p99 and their ratios, and sessions lost; then, with the rest
# closed, the CPU and context switches chaperone and the bare relay spend per echo round trip.
# The load comes from one asyncssh process (bench/scale.py). Not a test; no goal is asserted.
#
#   bench/scale.sh                     # builds `cargo build --release` first; ~3-6 min on 2 cores
#   BENCH_BUILD=0 SCALE_SESSIONS=300 SCALE_CONNS=100 bench/scale.sh
#   SCALE_KEEP=1 RUST_LOG=info,chaperone=debug bench/scale.sh   # keeps the work dir and its logs
#   SCALE_DEVICE_SESSIONS=200 bench/scale.sh   # chaperone's [ssh] device_sessions_per_connection (default
#                                              # 10, sshd's MaxSessions default; the device here takes 300)
#
# Needs: sshd, ssh-keygen, perl, rustc, and python3 with asyncssh (PYTHON=/path/to/venv/bin/python).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${BENCH_BUILD:=1}" "${SCALE_VENDORS:=100}" "${SCALE_CONNS:=300}" "${SCALE_SESSIONS:=1000}"
: "${SCALE_BURST:=200}" "${SCALE_STREAMERS:=200}" "${SCALE_ECHO:=200}" "${PYTHON:=python3}"
: "${SCALE_DEVICE_SESSIONS:=10}"
: "${CARGO_TARGET_DIR:=$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release/chaperone"
die() { echo "bench: $*" >&2; exit 2; }
for t in /usr/sbin/sshd ssh-keygen perl rustc "$PYTHON"; do command -v "$t" >/dev/null || die "missing $t"; done
"$PYTHON" -c 'import asyncssh' 2>/dev/null || die "$PYTHON has no asyncssh (pip install asyncssh)"
# Each session holds a vendor-side and a device-side socket, a recording, and sshd a process.
ulimit -n "$(ulimit -Hn)"
(( $(ulimit -n) >= 4 * SCALE_SESSIONS )) || die "ulimit -n is $(ulimit -n); need $((4 * SCALE_SESSIONS))"
W=$(mktemp -d -t chaperone-scale-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
    [[ -n ${DEV_USER_CREATED:-} ]] && userdel "$DEV_USER_CREATED" 2>/dev/null
    if [[ ${SCALE_KEEP:-0} == 1 ]]; then echo "bench: kept $W (serve.log, sshd.log, report.json)" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT INT TERM
[[ $BENCH_BUILD == 1 ]] && (cd "$ROOT" && cargo build --release -q)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return; sleep 0.05; done; die "nothing listens on $1"; }

# The device: an sshd that takes as many logins at once as chaperone will make.
D=$W/dev; mkdir -p "$D" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$D/host_key"; ssh-keygen -q -t ed25519 -N '' -f "$D/client_key"
cp "$D/client_key.pub" "$D/authorized_keys"
SSHD_PORT=$(free_port); USER_=$(id -un)
# As root, the device's sessions run as a throwaway user whose shell is /bin/sh: root's login shell on a
# developer machine may run heavy start-up files (here ~/.bashrc runs `pyenv init`, a rehash under a lock
# per session), which made a burst of 200 sessions straight to sshd fail as badly as through the bastion.
if [[ $(id -u) == 0 ]]; then
    USER_=chaperone-bench-dev
    userdel "$USER_" 2>/dev/null || true
    useradd --no-create-home --home-dir "$D" --shell /bin/sh --password '*' "$USER_" && DEV_USER_CREATED=$USER_
    chmod 755 "$W" "$D"; chmod 644 "$D/authorized_keys"
fi
printf 'Port %s\nListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin yes\nMaxStartups %s\nMaxSessions 300\nLogLevel ERROR\n' \
    "$SSHD_PORT" "$D/host_key" "$D/authorized_keys" "$((SCALE_SESSIONS + 100))" >"$D/sshd_config"
/usr/sbin/sshd -D -f "$D/sshd_config" -E "$D/sshd.log" & PIDS+=($!)
wait_port "$SSHD_PORT"
echo "[127.0.0.1]:$SSHD_PORT $(cat "$D/host_key.pub")" >"$W/known_hosts_device"
# The floor of any second hop: a bare TCP relay in front of the same sshd (bench/relay.rs, std only).
rustc -O --edition 2021 -o "$W/relay" "$ROOT/bench/relay.rs" || die "cannot build bench/relay.rs"
"$W/relay" "$SSHD_PORT" >"$W/relay.port" & RELAY_PID=$!; PIDS+=($RELAY_PID)
for _ in $(seq 100); do [[ -s $W/relay.port ]] && break; sleep 0.05; done
RELAY_PORT=$(cat "$W/relay.port"); [[ -n $RELAY_PORT ]] || die "the bare relay did not start"
echo "[127.0.0.1]:$RELAY_PORT $(cat "$D/host_key.pub")" >>"$W/known_hosts_device"

C=$W/chap; chap() { "$BIN" -c "$C/chaperone.toml" "$@"; }
"$BIN" init --dir "$C" --ssh-listen 127.0.0.1:0 --web-listen 127.0.0.1:0 >/dev/null
sed -i "s/^device_sessions_per_connection = .*/device_sessions_per_connection = $SCALE_DEVICE_SESSIONS/" "$C/chaperone.toml"
grep -q "^device_sessions_per_connection = $SCALE_DEVICE_SESSIONS\$" "$C/chaperone.toml" || die "cannot set device_sessions_per_connection"
chap asset add dev --address 127.0.0.1 --zone bench --purpose Benchmark --service "ssh:$SSHD_PORT/ssh" >/dev/null
chap asset hostkey set dev "$(cat "$D/host_key.pub")" >/dev/null
chap asset credential set dev --user "$USER_" --key "$D/client_key" >/dev/null
echo "adding $SCALE_VENDORS vendors with grants…" >&2
VENDORS="["
for i in $(seq "$SCALE_VENDORS"); do
    v=$(printf 'scale%03d' "$i")
    ssh-keygen -q -t ed25519 -N '' -C "$v" -f "$W/$v"
    secret=$(chap vendor add "$v" --org "Scale Org" --key "$W/$v.pub" --totp --json | sed -n 's/.*secret=\([A-Z2-7]*\).*/\1/p')
    [[ -n $secret ]] || die "no TOTP secret for $v"
    chap grant add --vendor "$v" --asset dev --services ssh --for 8h --reason benchmark >/dev/null
    VENDORS+="{\"name\": \"$v\", \"key\": \"$W/$v\", \"secret\": \"$secret\"},"
done
VENDORS="${VENDORS%,}]"
NO_COLOR=1 RUST_LOG=${RUST_LOG:-warn,chaperone=info} "$BIN" -c "$C/chaperone.toml" serve 2>"$C/serve.log" & CHAP_PID=$!; PIDS+=($CHAP_PID)
for _ in $(seq 200); do grep -q "chaperone serving" "$C/serve.log" && break; sleep 0.05; done
CHAP_PORT=$(sed -n 's/.*ssh=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$C/serve.log" | head -1)
[[ -n $CHAP_PORT ]] || die "chaperone did not start: $(tail -5 "$C/serve.log")"
echo "[127.0.0.1]:$CHAP_PORT $(cat "$C/ssh_host_ed25519_key.pub")" >"$W/known_hosts"

cat >"$W/spec.json" <<JSON
{"host": "127.0.0.1", "port": $CHAP_PORT, "known_hosts": "$W/known_hosts", "asset": "dev",
 "vendors": $VENDORS, "pid": $CHAP_PID,
 "device": {"port": $SSHD_PORT, "user": "$USER_", "key": "$D/client_key", "known_hosts": "$W/known_hosts_device"},
 "relay_port": $RELAY_PORT, "relay_pid": $RELAY_PID,
 "connections": $SCALE_CONNS, "sessions": $SCALE_SESSIONS, "burst": $SCALE_BURST,
 "streamers": $SCALE_STREAMERS, "echo_samples": $SCALE_ECHO}
JSON
echo "running the load ($SCALE_SESSIONS sessions over $SCALE_CONNS connections)…" >&2
"$PYTHON" "$ROOT/bench/scale.py" "$W/spec.json" >"$W/report.json" || { tail -20 "$C/serve.log" >&2; die "the load failed"; }
sleep 3
ENDED=$(chap session list --json --limit 100000 | "$PYTHON" -c '
import json, sys
rows = json.load(sys.stdin)
causes = {}
for r in rows:
    causes[r.get("end_cause") or "live"] = causes.get(r.get("end_cause") or "live", 0) + 1
print(len(rows), json.dumps(causes))')
"$PYTHON" - "$W/report.json" "$ENDED" "$(nproc)" "$SCALE_DEVICE_SESSIONS" <<'PY'
import json, sys, time
r = json.load(open(sys.argv[1])); ended = sys.argv[2]; cores = sys.argv[3]; per_link = sys.argv[4]
b0, bl, b1, b2, e = r["burst_direct"], r["burst_direct_logins"], r["burst_one_connection"], r["burst_spread"], r["echo_ms"]
print(f"\nscale, {r['sessions_live']} live sessions over {r['connections']} connections, {cores} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
print(f"  device_sessions_per_connection = {per_link} (the device's sshd takes 300)")
print(f"  session start, {b0['n']} at once on one connection straight to sshd (baseline): p50 {b0['p50']:.3f} s  p99 {b0['p99']:.3f} s  failed {b0['failed']}")
print(f"  session start, {b1['n']} at once on one connection:  p50 {b1['p50']:.3f} s  p99 {b1['p99']:.3f} s  failed {b1['failed']}  (chaperone CPU {b1['cpu_ms_per_session']:.1f} ms a session)")
print(f"  session start, {bl['n']} at once over {bl['logins']} fresh logins straight to sshd (baseline): p50 {bl['p50']:.3f} s  p99 {bl['p99']:.3f} s  failed {bl['failed']}")
print(f"  session start, {b2['n']} at once over the connections: p50 {b2['p50']:.3f} s  p99 {b2['p99']:.3f} s  failed {b2['failed']}  (chaperone CPU {b2['cpu_ms_per_session']:.1f} ms a session)")
print(f"  session start, all:                                   p50 {r['start_all']['p50']:.3f} s  p99 {r['start_all']['p99']:.3f} s")
print(f"  chaperone RSS with all live: {r['rss_mib_at_peak']['VmRSS']:.0f} MiB (peak {r['rss_mib_end']['VmHWM']:.0f} MiB)")
print(f"  echo round trip under load: chaperone p50 {e['chaperone']['p50']:.2f} ms p99 {e['chaperone']['p99']:.2f} ms;"
      f" direct p50 {e['direct']['p50']:.2f} ms p99 {e['direct']['p99']:.2f} ms;"
      f" ratio p50 {r['echo_ratio']['p50']:.2f} p99 {r['echo_ratio']['p99']:.2f};"
      f" chaperone meanwhile {100 * r['echo_chaperone_cores']:.0f} % of a core")
print(f"  echo through a bare TCP relay (no SSH, no recording: the floor of any second hop): p50 {e['relay']['p50']:.2f} ms"
      f" p99 {e['relay']['p99']:.2f} ms; ratio to direct p50 {r['echo_ratio']['relay_p50']:.2f} p99 {r['echo_ratio']['relay_p99']:.2f};"
      f" chaperone to the relay p50 {e['chaperone']['p50'] / e['relay']['p50']:.2f} p99 {e['chaperone']['p99'] / e['relay']['p99']:.2f}")
i = r["echo_idle"]
print(f"  echo with nothing else live: p50 chaperone {i['p50_ms']['chaperone']:.2f} ms, bare relay {i['p50_ms']['relay']:.2f} ms, direct {i['p50_ms']['direct']:.2f} ms;"
      f" per round trip chaperone spends {i['chaperone_cpu_us']:.0f} us of CPU and {i['chaperone_switches']:.1f} context switches,"
      f" the bare relay {i['relay_cpu_us']:.0f} us and {i['relay_switches']:.1f}"
      f" (chaperone's background taken off: {i['background_cpu_pct']:.1f} % of a core, {i['background_switches_per_s']:.0f} switches/s;"
      f" quiet after {i['quiet_after_s']:.0f} s)")
print(f"  sessions lost: {r['lost']} {r['lost_examples']}")
print(f"  sessions the bastion recorded (by how they ended): {ended}")
PY
