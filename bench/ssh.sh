#!/usr/bin/env bash
# Issue 3 benchmark: exec throughput, connect latency and "no hang" through chaperone vs directly, against
# the same throwaway OpenSSH sshd, all on loopback.
#
#   bench/ssh.sh                 # builds `cargo build --release`, then runs everything (~5-10 min)
#   BENCH_BUILD=0 bench/ssh.sh   # reuse target/release/chaperone
#
# What it starts (and stops again, with traps): an sshd on a free 127.0.0.1 port standing in for a device,
# and `chaperone serve` on a fresh data dir (SQLite, recording on as always) with one device, BENCH_VENDORS
# vendors (key + TOTP) and a grant each. Everything lives in one temp dir, removed at the end.
#
# TOTP: a vendor's code is accepted for steps now-1, now, now+1 and never twice (replay protection), so one
# vendor logs in at most 3 times per 30 s. Each chaperone sample is a full new connection + key + TOTP login;
# the script hands out unused steps round-robin over the vendors and waits (outside any timer) when all are
# spent. The code is computed with oathtool before the timer starts; askpass only prints it.
#
# Results: (a) throughput of `head -c BENCH_BYTES /dev/zero` to /dev/null, median of BENCH_RUNS each side
# ((a2) the same of text, (a3) the same uploaded: piped into `cat >/dev/null` on the device),
# (b) connect + `true` latency, median of BENCH_LAT each side, (c) BENCH_HANG_RUNS x BENCH_HANG_BYTES through
# chaperone, each under `timeout`. Direct and chaperone samples are interleaved so background load hits both.
# Exit status: 0 ok, 1 a run hung or failed (goal misses are reported, not fatal unless BENCH_STRICT=1),
# 2 setup failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${BENCH_BUILD:=1}"
: "${BENCH_RUNS:=5}"                 # throughput runs per side
: "${BENCH_BYTES:=500000000}"
: "${BENCH_TP_TIMEOUT:=600}"         # seconds, per throughput run
: "${BENCH_LAT:=20}"                 # latency samples per side (>= 15)
: "${BENCH_HANG_RUNS:=20}"
: "${BENCH_HANG_BYTES:=100000000}"
: "${BENCH_HANG_TIMEOUT:=120}"       # seconds, per run; hitting it counts as a hang
: "${BENCH_VENDORS:=10}"
: "${BENCH_STRICT:=0}"               # 1: also exit 1 when a goal is missed
: "${BENCH_KEEP:=0}"                 # 1: keep the temp dir (recordings are deleted after each run anyway)
: "${BENCH_HOLD:=0}"                 # 1: set up, print how to connect, and wait for Ctrl-C (for profiling)
: "${CARGO_TARGET_DIR:=$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release/chaperone"

die() { echo "bench: $*" >&2; exit 2; }
say() { printf '%s\n' "$*" >&2; }

for tool in ssh ssh-keygen /usr/sbin/sshd oathtool timeout awk sort; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install openssh-client openssh-server oathtool)"
done

# ---------------------------------------------------------------------------------------------- cleanup
W=$(mktemp -d "${TMPDIR:-/tmp}/chaperone-bench.XXXXXX")
chmod 700 "$W"
SSHD_PID="" CHAP_PID="" HOLD_PID=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    for pid in "$HOLD_PID" "$CHAP_PID" "$SSHD_PID"; do
        if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
    done
    if [[ "$BENCH_KEEP" == 1 ]]; then say "kept $W"; else rm -rf "$W"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------- build
if [[ "$BENCH_BUILD" == 1 ]]; then
    say "== cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet) || die "build failed"
fi
[[ -x "$BIN" ]] || die "$BIN not found (build first, or set CARGO_TARGET_DIR)"

# A loopback port nobody listens on (checked, not reserved: a clash is retried below).
free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    die "no free port"
}
wait_listen() { # port pid what
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# ---------------------------------------------------------------------------------------------- device (sshd)
D="$W/sshd"; mkdir -p "$D" /run/sshd 2>/dev/null || mkdir -p "$D"
ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$D/host_key"
ssh-keygen -q -t ed25519 -N '' -C bench-device-cred -f "$D/client_key"
cp "$D/client_key.pub" "$D/authorized_keys"
DEV_USER=$(id -un)
for attempt in 1 2 3 4 5; do
    SSHD_PORT=$(free_port)
    cat >"$D/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $D/host_key
PidFile $D/sshd.pid
AuthorizedKeysFile $D/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin yes
MaxStartups 100
LogLevel DEBUG1
EOF
    /usr/sbin/sshd -D -f "$D/sshd_config" -E "$D/sshd.log" &
    SSHD_PID=$!
    wait_listen "$SSHD_PORT" "$SSHD_PID" && break
    kill "$SSHD_PID" 2>/dev/null; wait "$SSHD_PID" 2>/dev/null || true; SSHD_PID=""
    [[ $attempt == 5 ]] && die "sshd did not start: $(tail -5 "$D/sshd.log")"
done
echo "[127.0.0.1]:$SSHD_PORT $(cat "$D/host_key.pub")" >"$W/known_hosts_device"

TMO=()   # a `timeout …` prefix for the ssh commands below, or nothing
DOPTS=() # extra options for direct_ssh
direct_ssh() {
    "${TMO[@]}" ssh -F /dev/null -i "$D/client_key" -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes \
        -o "UserKnownHostsFile=$W/known_hosts_device" -o PreferredAuthentications=publickey \
        -o LogLevel=ERROR -o ConnectTimeout=10 "${DOPTS[@]}" -p "$SSHD_PORT" "$DEV_USER@127.0.0.1" "$@" <"${SSH_IN:-/dev/null}"
}
direct_ssh true || die "direct ssh to the sshd failed"

# ---------------------------------------------------------------------------------------------- chaperone
C="$W/chaperone"
chap() { "$BIN" -c "$C/chaperone.toml" "$@"; }
"$BIN" init --dir "$C" --ssh-listen 127.0.0.1:0 --web-listen 127.0.0.1:0 >/dev/null || die "init failed"
chap asset add dev --address 127.0.0.1 --zone bench --purpose "Benchmark device" \
    --service "ssh:$SSHD_PORT/ssh" >/dev/null
chap asset hostkey set dev "$(cat "$D/host_key.pub")" >/dev/null
chap asset credential set dev --user "$DEV_USER" --key "$D/client_key" >/dev/null
declare -a SECRET LAST
for i in $(seq "$BENCH_VENDORS"); do
    v=$(printf 'bench%02d' "$i")
    ssh-keygen -q -t ed25519 -N '' -C "$v" -f "$W/$v"
    uri=$(chap vendor add "$v" --org "Bench Org" --key "$W/$v.pub" --totp --json)
    SECRET[i]=$(printf '%s' "$uri" | sed -n 's/.*secret=\([A-Z2-7]*\).*/\1/p')
    [[ -n "${SECRET[i]}" ]] || die "no TOTP secret for $v: $uri"
    LAST[i]=0
    chap grant add --vendor "$v" --asset dev --services ssh --for 8h --reason "benchmark" >/dev/null
done

RUST_LOG=${RUST_LOG:-info} NO_COLOR=1 "$BIN" -c "$C/chaperone.toml" serve 2>"$C/serve.log" &
CHAP_PID=$!
for _ in $(seq 200); do grep -q "chaperone serving" "$C/serve.log" && break; sleep 0.05; done
CHAP_PORT=$(sed -n 's/.*chaperone serving.* ssh=127\.0\.0\.1:\([0-9]*\).*/\1/p;s/.*ssh=127\.0\.0\.1:\([0-9]*\).*chaperone serving.*/\1/p' "$C/serve.log" | head -1)
[[ -n "$CHAP_PORT" ]] || die "chaperone serve did not start: $(tail -5 "$C/serve.log")"
echo "[127.0.0.1]:$CHAP_PORT $(cat "$C/ssh_host_ed25519_key.pub")" >"$W/known_hosts_chaperone"

# The next vendor with an unused TOTP step that stays valid for >= 5 s; waits when all are spent.
# Sets V (vendor number) and writes its askpass script. Never called inside a timed region.
RR=0
pick_vendor() {
    local now lo hi n i step
    while :; do
        now=$(date +%s); lo=$(((now + 5) / 30 - 1)); hi=$((now / 30 + 1))
        for n in $(seq 0 $((BENCH_VENDORS - 1))); do
            i=$(((RR + n) % BENCH_VENDORS + 1))
            step=$((LAST[i] + 1 > lo ? LAST[i] + 1 : lo))
            if ((step <= hi)); then
                LAST[i]=$step; V=$i; RR=$(((i) % BENCH_VENDORS))
                printf '#!/bin/sh\necho %s\n' "$(oathtool --totp -b -N "@$((step * 30))" "${SECRET[i]}")" \
                    >"$W/askpass-$i.sh"
                chmod 700 "$W/askpass-$i.sh"
                return
            fi
        done
        sleep 1
    done
}
chap_ssh() { # uses V from pick_vendor
    local v; v=$(printf 'bench%02d' "$V")
    SSH_ASKPASS="$W/askpass-$V.sh" SSH_ASKPASS_REQUIRE=force DISPLAY='' \
        "${TMO[@]}" ssh -F /dev/null -i "$W/$v" -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes \
        -o "UserKnownHostsFile=$W/known_hosts_chaperone" \
        -o PreferredAuthentications=publickey,keyboard-interactive -o NumberOfPasswordPrompts=1 \
        -o LogLevel=ERROR -o ConnectTimeout=10 -p "$CHAP_PORT" "$v+dev@127.0.0.1" "$@" <"${SSH_IN:-/dev/null}"
}

# Waits (bounded) until no session is live, then until the indexer has read the closed recording back
# (search text and playback index, on a thread of its own at nice 19), then deletes the big recordings (an
# exec without a pty is recorded 1:1 as .exec; a pty session as .cast, where 500 MB of NULs would be 3 GB).
# Waiting for the indexer keeps each sample, on either side, from sharing the CPU with the last chaperone
# sample's indexing: the relay is measured alone, and the indexing is timed and reported on its own line.
# Prints two figures: how long the session's end (recording flush + fsync + DB) lagged the client, and how
# long the indexer ran after it (0 if it never showed within INDEX_SHOW seconds).
SESS_WAIT_MAX=120 INDEX_WAIT_MAX=600 INDEX_SHOW=1
settle() {
    local t0 t1 t2 live seen=0 quiet=0
    t0=$EPOCHREALTIME
    for _ in $(seq $((SESS_WAIT_MAX * 10))); do
        live=$(chap session list --json | grep -c '"ended_at": *null' || true)
        [[ "$live" == 0 ]] && break
        sleep 0.1
    done
    t1=$EPOCHREALTIME t2=$t1
    for _ in $(seq $((INDEX_WAIT_MAX * 10))); do
        if grep -qsx indexer /proc/"$CHAP_PID"/task/*/comm; then seen=1 quiet=0 t2=$EPOCHREALTIME
        else quiet=$((quiet + 1)); fi
        ((quiet >= INDEX_SHOW * 10)) && break
        sleep 0.1
    done
    find "$C/recordings" -type f \( -name '*.cast' -o -name '*.exec' \) -size +1M -delete 2>/dev/null || true
    awk -v a="$t0" -v b="$t1" -v c="$t2" -v s="$seen" 'BEGIN { printf "%.2f %.1f", b - a, s ? c - b : 0 }'
}
cast_bytes() { find "$C/recordings" -type f \( -name '*.cast' -o -name '*.exec' \) -printf '%s\n' | sort -n | tail -1; }

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
TICK=$(getconf CLK_TCK)
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "nan"; exit } if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6g\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
minmax() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s..%s", lo, hi }'; }

if [[ "$BENCH_HOLD" == 1 ]]; then
    # Helpers for experiments: `$W/chap-ssh N CMD` logs in as vendor N with a code for the step it picks
    # (a vendor can log in at most 3 times per 30 s); `$W/direct-ssh CMD` goes straight to the sshd.
    {
        echo '#!/usr/bin/env bash'
        echo 'set -euo pipefail'
        declare -p W BENCH_VENDORS CHAP_PORT
        printf 'declare -a SECRET=(%s)\n' "$(for i in $(seq "$BENCH_VENDORS"); do printf '[%d]=%s ' "$i" "${SECRET[i]}"; done)"
        echo 'TMO=()'
        declare -f chap_ssh
        cat <<'EOS'
V=$1; shift
exec 9>"$W/steps.lock"; flock 9
last=$(cat "$W/step-$V" 2>/dev/null || echo 0)
while :; do
    now=$(date +%s); lo=$(((now + 5) / 30 - 1)); hi=$((now / 30 + 1))
    step=$((last + 1 > lo ? last + 1 : lo)); ((step <= hi)) && break; sleep 1
done
echo "$step" >"$W/step-$V"; flock -u 9
printf '#!/bin/sh\necho %s\n' "$(oathtool --totp -b -N "@$((step * 30))" "${SECRET[V]}")" >"$W/askpass-$V.sh"
chmod 700 "$W/askpass-$V.sh"
chap_ssh "$@"
EOS
    } >"$W/chap-ssh"
    { echo '#!/usr/bin/env bash'; echo 'TMO=()'; declare -p D W SSHD_PORT DEV_USER; declare -f direct_ssh; echo 'direct_ssh "$@"'; } >"$W/direct-ssh"
    chmod 700 "$W/chap-ssh" "$W/direct-ssh"
    say "== holding: chaperone pid $CHAP_PID (ssh port $CHAP_PORT), sshd pid $SSHD_PID (port $SSHD_PORT)"
    say "   $W/chap-ssh N 'CMD'   (N = 1..$BENCH_VENDORS)    $W/direct-ssh 'CMD'    chaperone -c $C/chaperone.toml …"
    say "   Ctrl-C (or kill $$) stops everything and removes $W"
    while :; do sleep 3600 & HOLD_PID=$!; wait "$HOLD_PID" || true; done
fi

# ---------------------------------------------------------------------------------------------- context
cipher_of() { grep -m1 -o 'kex: server->client cipher: [^ ]*' | awk '{ print $4 }'; }
DIRECT_CIPHER=$(direct_ssh -v true 2>&1 | cipher_of)
pick_vendor
VENDOR_CIPHER=$(chap_ssh -v true 2>&1 | cipher_of)
settle >/dev/null
DEVICE_CIPHER=$(grep -o 'kex: client->server cipher: [^ ]*' "$D/sshd.log" | tail -1 | awk '{ print $4 }')
say "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
say "== $(ssh -V 2>&1); chaperone $("$BIN" --version 2>/dev/null | awk '{ print $2 }') ($BIN)"
say "== ciphers: direct $DIRECT_CIPHER; vendor->chaperone $VENDOR_CIPHER; chaperone->device $DEVICE_CIPHER"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------- (a) throughput
say "== (a) throughput: head -c $BENCH_BYTES /dev/zero, $BENCH_RUNS runs per side, interleaved"
: >"$W/tp_direct"; : >"$W/tp_matched"; : >"$W/tp_chap"; : >"$W/tp_chap_cpu"; : >"$W/tp_lag"; : >"$W/tp_index"
TP_FAIL=0
# A hop of run_tp: `$1 CMD`, its standard input BENCH_BYTES of NULs when UPLOAD=1, else nothing.
hop() {
    local f=$1; shift
    if [[ ${UPLOAD:-0} == 1 ]]; then head -c "$BENCH_BYTES" /dev/zero | SSH_IN=/dev/stdin "$f" "$@"
    else "$f" "$@"; fi
}
run_tp() { # side (direct | matched | chaperone) payload-command result-prefix
    local t0 t1 rc c0 c1 s
    if [[ $1 == direct || $1 == matched ]]; then
        # matched: the direct hop forced to the cipher of chaperone's vendor leg (an honest baseline:
        # the client's default chacha20 costs the client more than AES-GCM does).
        [[ $1 == matched ]] && DOPTS=(-c "$VENDOR_CIPHER")
        t0=$EPOCHREALTIME
        hop direct_ssh "$2" >/dev/null && rc=0 || rc=$?
        t1=$EPOCHREALTIME
        DOPTS=()
    else
        pick_vendor
        c0=$(cpu_ticks "$CHAP_PID")
        t0=$EPOCHREALTIME
        hop chap_ssh "$2" >/dev/null && rc=0 || rc=$?
        t1=$EPOCHREALTIME
        c1=$(cpu_ticks "$CHAP_PID")
    fi
    s=$(elapsed "$t0" "$t1")
    if [[ $rc != 0 ]]; then
        say "   $1: FAILED (exit $rc after ${s}s)"; TP_FAIL=$((TP_FAIL + 1)); return
    fi
    local mbs; mbs=$(awk -v b="$BENCH_BYTES" -v s="$s" 'BEGIN { printf "%.1f", b / s / 1e6 }')
    if [[ $1 == direct || $1 == matched ]]; then
        echo "$mbs" >>"$W/${3}_$1"
        say "   $(printf '%-10s' "$1:") ${s}s  $mbs MB/s"
    else
        echo "$mbs" >>"$W/${3}_chap"
        local cpu; cpu=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" -v s="$s" 'BEGIN { printf "%.0f", (b - a) / t / s * 100 }')
        echo "$cpu" >>"$W/${3}_chap_cpu"
        local cast; cast=$(cast_bytes)
        local lag idx; read -r lag idx <<<"$(settle)"
        echo "$lag" >>"$W/tp_lag"; echo "$idx" >>"$W/${3}_index"
        say "   chaperone: ${s}s  $mbs MB/s  (chaperone CPU ${cpu}% of one core, recording ${cast:-?} B, session ended ${lag}s after the client, indexed in ${idx}s)"
    fi
}
TMO=(timeout -k 5 "$BENCH_TP_TIMEOUT")
ZEROS="head -c $BENCH_BYTES /dev/zero"
for r in $(seq "$BENCH_RUNS"); do
    if ((r % 2)); then run_tp direct "$ZEROS" tp; run_tp matched "$ZEROS" tp; run_tp chaperone "$ZEROS" tp
    else run_tp chaperone "$ZEROS" tp; run_tp matched "$ZEROS" tp; run_tp direct "$ZEROS" tp; fi
done
# The same amount of plain text (an `ls -l` line, repeated): what terminal output usually is. Every NUL above
# becomes 6 bytes of JSON (`\u0000`) in the recording; text is recorded nearly 1:1.
say "== (a2) throughput: $BENCH_BYTES bytes of text (yes LINE | head -c), $BENCH_RUNS runs per side, interleaved"
: >"$W/tx_direct"; : >"$W/tx_matched"; : >"$W/tx_chap"; : >"$W/tx_chap_cpu"; : >"$W/tx_index"
TEXT="yes 'drwxr-xr-x 2 service service 4096 Nov 23 10:00 logs' | head -c $BENCH_BYTES"
for r in $(seq "$BENCH_RUNS"); do
    if ((r % 2)); then run_tp direct "$TEXT" tx; run_tp matched "$TEXT" tx; run_tp chaperone "$TEXT" tx
    else run_tp chaperone "$TEXT" tx; run_tp matched "$TEXT" tx; run_tp direct "$TEXT" tx; fi
done
# The other way: the vendor uploads (a firmware image piped into a command). chaperone records a
# command's stdin, so the recording is as large as the upload; its window toward the vendor is refilled
# as the device takes the data (russh patch 10).
say "== (a3) upload: head -c $BENCH_BYTES /dev/zero | ssh … 'cat >/dev/null', $BENCH_RUNS runs per side, interleaved"
: >"$W/up_direct"; : >"$W/up_matched"; : >"$W/up_chap"; : >"$W/up_chap_cpu"; : >"$W/up_index"
SINK='cat >/dev/null'
UPLOAD=1
for r in $(seq "$BENCH_RUNS"); do
    if ((r % 2)); then run_tp direct "$SINK" up; run_tp matched "$SINK" up; run_tp chaperone "$SINK" up
    else run_tp chaperone "$SINK" up; run_tp matched "$SINK" up; run_tp direct "$SINK" up; fi
done
UPLOAD=0

TMO=()

# ---------------------------------------------------------------------------------------------- (b) latency
# OpenSSH 9.2 picks sntrup761x25519-sha512 client<->sshd, and so do both of chaperone's hops (russh patch
# 2, third_party/README.md); a direct login with curve25519-sha256 is measured too, as the reference
# without the post-quantum part.
say "== (b) connect + true: $BENCH_LAT samples per side, interleaved (chaperone: key + TOTP login each)"
: >"$W/lat_direct"; : >"$W/lat_chap"; : >"$W/lat_x25519"
LAT_FAIL=0
for r in $(seq "$BENCH_LAT"); do
    for side in direct chaperone x25519; do
        if [[ $side == direct ]]; then
            t0=$EPOCHREALTIME; direct_ssh true && rc=0 || rc=$?; t1=$EPOCHREALTIME
            f="$W/lat_direct"
        elif [[ $side == x25519 ]]; then
            DOPTS=(-o KexAlgorithms=curve25519-sha256)
            t0=$EPOCHREALTIME; direct_ssh true && rc=0 || rc=$?; t1=$EPOCHREALTIME
            DOPTS=(); f="$W/lat_x25519"
        else
            pick_vendor
            t0=$EPOCHREALTIME; chap_ssh true && rc=0 || rc=$?; t1=$EPOCHREALTIME
            f="$W/lat_chap"
        fi
        if [[ $rc == 0 ]]; then elapsed "$t0" "$t1" >>"$f"; echo >>"$f"; else LAT_FAIL=$((LAT_FAIL + 1)); say "   $side sample $r failed (exit $rc)"; fi
    done
done
sed -i '/^$/d' "$W/lat_direct" "$W/lat_chap" "$W/lat_x25519"
settle >/dev/null

# ---------------------------------------------------------------------------------------------- (c) no hang
say "== (c) $BENCH_HANG_RUNS x head -c $BENCH_HANG_BYTES through chaperone, each under timeout ${BENCH_HANG_TIMEOUT}s"
HANGS=0 HANG_FAIL=0
: >"$W/hang_mbs"
for r in $(seq "$BENCH_HANG_RUNS"); do
    pick_vendor
    t0=$EPOCHREALTIME
    TMO=(timeout -k 5 "$BENCH_HANG_TIMEOUT")
    res=$(set +e; chap_ssh "head -c $BENCH_HANG_BYTES /dev/zero" | wc -c; echo "${PIPESTATUS[0]}")
    TMO=()
    got=$(sed -n 1p <<<"$res"); rc=$(sed -n 2p <<<"$res")
    t1=$EPOCHREALTIME
    s=$(elapsed "$t0" "$t1")
    if [[ $rc == 124 || $rc == 137 ]]; then
        HANGS=$((HANGS + 1)); verdict="HUNG (killed after ${BENCH_HANG_TIMEOUT}s, $got bytes)"
    elif [[ $rc != 0 || $got != "$BENCH_HANG_BYTES" ]]; then
        HANG_FAIL=$((HANG_FAIL + 1)); verdict="FAILED (exit $rc, $got bytes)"
    else
        mbs=$(awk -v b="$BENCH_HANG_BYTES" -v s="$s" 'BEGIN { printf "%.1f", b / s / 1e6 }')
        echo "$mbs" >>"$W/hang_mbs"; verdict="ok ${mbs} MB/s"
    fi
    read -r lag _ <<<"$(settle)"
    say "   run $r/$BENCH_HANG_RUNS (vendor $V): ${s}s $verdict, session ended ${lag}s after the client"
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------- summary
TPD=$(median <"$W/tp_direct"); TPC=$(median <"$W/tp_chap")
LD=$(median <"$W/lat_direct"); LC=$(median <"$W/lat_chap")
TPR=$(awk -v c="$TPC" -v d="$TPD" 'BEGIN { printf "%.2f", c / d }')
TPM=$(median <"$W/tp_matched"); TPMR=$(awk -v c="$TPC" -v d="$TPM" 'BEGIN { printf "%.2f", c / d }')
TPM_OK=$(awk -v r="$TPMR" 'BEGIN { print (r >= 0.85) ? "met" : "MISSED" }')
TXM=$(median <"$W/tx_matched")
TXD=$(median <"$W/tx_direct"); TXC=$(median <"$W/tx_chap")
TXR=$(awk -v c="$TXC" -v d="$TXD" 'BEGIN { printf "%.2f", c / d }')
TXMR=$(awk -v c="$TXC" -v d="$TXM" 'BEGIN { printf "%.2f", c / d }')
TX_OK=$(awk -v r="$TXR" 'BEGIN { print (r >= 1.0) ? "met" : "MISSED" }')
UPM=$(median <"$W/up_matched")
UPD=$(median <"$W/up_direct"); UPC=$(median <"$W/up_chap")
UPR=$(awk -v c="$UPC" -v d="$UPD" 'BEGIN { printf "%.2f", c / d }')
UPMR=$(awk -v c="$UPC" -v d="$UPM" 'BEGIN { printf "%.2f", c / d }')
LR=$(awk -v c="$LC" -v d="$LD" 'BEGIN { printf "%.2f", c / d }')
LX=$(median <"$W/lat_x25519")
LXR=$(awk -v c="$LC" -v d="$LX" 'BEGIN { printf "%.2f", c / d }')
LX_OK=$(awk -v r="$LXR" 'BEGIN { print (r <= 1.5) ? "met" : "MISSED" }')
ms() { awk -v s="$1" 'BEGIN { printf "%.1f", s * 1000 }'; }
msr() { awk -F'[.][.]' '{ printf "%.0f..%.0f", $1 * 1000, $2 * 1000 }' <<<"$1"; }
TP_OK=$(awk -v r="$TPR" 'BEGIN { print (r >= 1.0) ? "met" : "MISSED" }')
LAT_OK=$(awk -v r="$LR" 'BEGIN { print (r <= 1.5) ? "met" : "MISSED" }')
HANG_OK=$([[ $HANGS == 0 && $HANG_FAIL == 0 ]] && echo "met" || echo "MISSED")

cat <<EOF

chaperone benchmark  $(date -u '+%Y-%m-%d %H:%M UTC')  $(nproc) cores  load $LOAD_START -> $LOAD_END
ciphers: direct $DIRECT_CIPHER | vendor->chaperone $VENDOR_CIPHER, chaperone->device $DEVICE_CIPHER
| measure                                   | direct          | chaperone        | ratio | goal    |        |
|-------------------------------------------|-----------------|------------------|-------|---------|--------|
| (a) $(printf '%-5s' "$((BENCH_BYTES / 1000000))") MB exec, MB/s median of $(printf '%-2s' "$BENCH_RUNS")     | $(printf '%-15s' "$TPD") | $(printf '%-16s' "$TPC") | $(printf '%-5s' "$TPR") | >= 1.0x | $TP_OK |
|     range (MB/s)                          | $(printf '%-15s' "$(minmax <"$W/tp_direct")") | $(printf '%-16s' "$(minmax <"$W/tp_chap")") |       |         |        |
|     direct with -c $(printf '%-22s' "$VENDOR_CIPHER") | $(printf '%-15s' "$TPM") | $(printf '%-16s' "$TPC") | $(printf '%-5s' "$TPMR") | >= 0.85x | $TPM_OK |
|     chaperone CPU, % of one core (median) |                 | $(printf '%-16s' "$(median <"$W/tp_chap_cpu")") |       |         |        |
|     then indexing it, s (median; nice 19) |                 | $(printf '%-16s' "$(median <"$W/tp_index")") |       |         |        |
| (a2) same size of text, MB/s median       | $(printf '%-15s' "$TXD") | $(printf '%-16s' "$TXC") | $(printf '%-5s' "$TXR") | >= 1.0x | $TX_OK |
|     range (MB/s)                          | $(printf '%-15s' "$(minmax <"$W/tx_direct")") | $(printf '%-16s' "$(minmax <"$W/tx_chap")") |       |         |        |
|     direct with -c $(printf '%-22s' "$VENDOR_CIPHER") | $(printf '%-15s' "$TXM") | $(printf '%-16s' "$TXC") | $(printf '%-5s' "$TXMR") |         |        |
|     chaperone CPU, % of one core (median) |                 | $(printf '%-16s' "$(median <"$W/tx_chap_cpu")") |       |         |        |
|     then indexing it, s (median; nice 19) |                 | $(printf '%-16s' "$(median <"$W/tx_index")") |       |         |        |
| (a3) same size uploaded, MB/s median      | $(printf '%-15s' "$UPD") | $(printf '%-16s' "$UPC") | $(printf '%-5s' "$UPR") |         |        |
|     range (MB/s)                          | $(printf '%-15s' "$(minmax <"$W/up_direct")") | $(printf '%-16s' "$(minmax <"$W/up_chap")") |       |         |        |
|     direct with -c $(printf '%-22s' "$VENDOR_CIPHER") | $(printf '%-15s' "$UPM") | $(printf '%-16s' "$UPC") | $(printf '%-5s' "$UPMR") |         |        |
|     chaperone CPU, % of one core (median) |                 | $(printf '%-16s' "$(median <"$W/up_chap_cpu")") |       |         |        |
| (b) connect + true, ms median of $(printf '%-2s' "$(wc -l <"$W/lat_chap")")       | $(printf '%-15s' "$(ms "$LD")") | $(printf '%-16s' "$(ms "$LC")") | $(printf '%-5s' "$LR") | <= 1.5x | $LAT_OK |
|     range (ms)                            | $(printf '%-15s' "$(msr "$(minmax <"$W/lat_direct")")") | $(printf '%-16s' "$(msr "$(minmax <"$W/lat_chap")")") |       |         |        |
|     direct with KexAlgorithms=curve25519  | $(printf '%-15s' "$(ms "$LX")") | $(printf '%-16s' "$(ms "$LC")") | $(printf '%-5s' "$LXR") | <= 1.5x | $LX_OK |
| (c) $BENCH_HANG_RUNS x $((BENCH_HANG_BYTES / 1000000)) MB through chaperone         |                 | $(printf '%-16s' "$((BENCH_HANG_RUNS - HANGS - HANG_FAIL)) ok, $HANGS hung") |       | 0 hung  | $HANG_OK |
|     MB/s median (range)                   |                 | $(printf '%-16s' "$(median <"$W/hang_mbs") ($(minmax <"$W/hang_mbs"))") |       |         |        |
failures: throughput $TP_FAIL, latency $LAT_FAIL, (c) non-hang failures $HANG_FAIL
EOF

if ((HANGS > 0 || HANG_FAIL > 0 || TP_FAIL > 0 || LAT_FAIL > 0)); then exit 1; fi
if [[ "$BENCH_STRICT" == 1 && ( $TP_OK != met || $LAT_OK != met ) ]]; then exit 1; fi
exit 0
