#!/usr/bin/env bash
# Issue 4 benchmark: throughput through a chaperone `ssh -L` tunnel vs a plain `ssh -L` through the same
# sshd to the same TCP source, in one run, on loopback. Prints medians and the ratio (goal >= 1.0x).
#
#   bench/tunnel.sh                  # builds `cargo build --release` first
#   BENCH_BUILD=0 BENCH_BYTES=200000000 BENCH_RUNS=5 bench/tunnel.sh
#
# Starts (and stops, with traps) an sshd, a TCP source that writes BENCH_BYTES to every connection, and
# `chaperone serve` on a fresh data dir; all in one temp dir, removed at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${BENCH_BUILD:=1}" "${BENCH_RUNS:=5}" "${BENCH_BYTES:=500000000}"
: "${CARGO_TARGET_DIR:=$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release/chaperone"
die() { echo "bench: $*" >&2; exit 2; }
for t in sshd:/usr/sbin/sshd ssh oathtool python3; do command -v "${t#*:}" >/dev/null || die "missing ${t%%:*}"; done
W=$(mktemp -d -t chaperone-tunnel-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT INT TERM
[[ $BENCH_BUILD == 1 ]] && (cd "$ROOT" && cargo build --release -q)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return; sleep 0.05; done; die "nothing listens on $1"; }

# The device: sshd plus a TCP source.
D=$W/dev; mkdir -p "$D" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$D/host_key"; ssh-keygen -q -t ed25519 -N '' -f "$D/client_key"
cp "$D/client_key.pub" "$D/authorized_keys"
SSHD_PORT=$(free_port); USER_=$(id -un)
printf 'Port %s\nListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin yes\nAllowTcpForwarding yes\n' \
    "$SSHD_PORT" "$D/host_key" "$D/authorized_keys" >"$D/sshd_config"
/usr/sbin/sshd -D -f "$D/sshd_config" -E "$D/sshd.log" & PIDS+=($!)
SRC_PORT=$(free_port)
python3 - "$SRC_PORT" "$BENCH_BYTES" <<'PY' & PIDS+=($!)
import socket, sys, threading
port, total = int(sys.argv[1]), int(sys.argv[2])
chunk = b"\x00" * (1 << 20)
def serve(c):
    left = total
    try:
        while left > 0:
            n = min(left, len(chunk)); c.sendall(chunk[:n]); left -= n
    except OSError:
        pass  # probes (wait_port) hang up early
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", port)); s.listen(16)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
wait_port "$SSHD_PORT"; wait_port "$SRC_PORT"

# chaperone with the source as a tcp service (no byte budget: this is a benchmark, not exfiltration).
C=$W/chap; chap() { "$BIN" -c "$C/chaperone.toml" "$@"; }
"$BIN" init --dir "$C" --ssh-listen 127.0.0.1:0 --web-listen 127.0.0.1:0 >/dev/null
printf '\n[budgets.services.src]\nmax_down_per_hour = "none"\n' >>"$C/chaperone.toml"
chap asset add dev --address 127.0.0.1 --zone bench --purpose Benchmark --service "ssh:$SSHD_PORT/ssh" --service "src:$SRC_PORT/tcp" >/dev/null
ssh-keygen -q -t ed25519 -N '' -f "$W/vendor"
SECRET=$(chap vendor add bench --org Bench --key "$W/vendor.pub" --totp --json | sed -n 's/.*secret=\([A-Z2-7]*\).*/\1/p')
chap grant add --vendor bench --asset dev --services src --for 8h --reason benchmark >/dev/null
NO_COLOR=1 "$BIN" -c "$C/chaperone.toml" serve 2>"$C/serve.log" & PIDS+=($!)
for _ in $(seq 200); do grep -q "chaperone serving" "$C/serve.log" && break; sleep 0.05; done
CHAP_PORT=$(sed -n 's/.*ssh=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$C/serve.log" | head -1)
[[ -n $CHAP_PORT ]] || die "chaperone did not start"
echo "[127.0.0.1]:$CHAP_PORT $(cat "$C/ssh_host_ed25519_key.pub")" >"$W/known_hosts"
printf '#!/bin/sh\noathtool --totp -b %s\n' "$SECRET" >"$W/askpass"; chmod 700 "$W/askpass"

# Three long-lived tunnels: plain OpenSSH -L through sshd with the client's default cipher, the same forced
# to the cipher chaperone's vendor leg uses (OpenSSH picks aes128-gcm from chaperone's AES-GCM-only offer on
# AES-NI machines), and chaperone -L.
: "${BENCH_MATCHED_CIPHER:=aes128-gcm@openssh.com}"
L1=$(free_port); L2=$(free_port); L3=$(free_port)
ssh -F /dev/null -i "$D/client_key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
    -N -L "$L1:127.0.0.1:$SRC_PORT" -p "$SSHD_PORT" "$USER_@127.0.0.1" & PIDS+=($!)
ssh -F /dev/null -i "$D/client_key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
    -c "$BENCH_MATCHED_CIPHER" -N -L "$L3:127.0.0.1:$SRC_PORT" -p "$SSHD_PORT" "$USER_@127.0.0.1" & PIDS+=($!)
SSH_ASKPASS=$W/askpass SSH_ASKPASS_REQUIRE=force DISPLAY='' ssh -F /dev/null -i "$W/vendor" -o IdentitiesOnly=yes \
    -o "UserKnownHostsFile=$W/known_hosts" -o PreferredAuthentications=publickey,keyboard-interactive -o LogLevel=ERROR \
    -N -L "$L2:dev:$SRC_PORT" -p "$CHAP_PORT" "bench@127.0.0.1" </dev/null & PIDS+=($!)
wait_port "$L1"; wait_port "$L2"; wait_port "$L3"

# One sample: MB/s reading everything from a local tunnel port.
sample() { python3 - "$1" "$BENCH_BYTES" <<'PY'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); total = 0; t = time.perf_counter()
buf = bytearray(1 << 20)
while True:
    n = s.recv_into(buf)
    if not n: break
    total += n
dt = time.perf_counter() - t
if total != int(sys.argv[2]): sys.exit(f"short read: {total}")
print(f"{total / dt / 1e6:.1f}")
PY
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
: >"$W/res_direct"; : >"$W/res_matched"; : >"$W/res_chap"
for r in $(seq "$BENCH_RUNS"); do   # interleaved, so background load hits every side
    sample "$L1" >>"$W/res_direct"; sample "$L3" >>"$W/res_matched"; sample "$L2" >>"$W/res_chap"
    echo "run $r: direct $(tail -1 "$W/res_direct") MB/s, direct -c $BENCH_MATCHED_CIPHER $(tail -1 "$W/res_matched") MB/s, chaperone $(tail -1 "$W/res_chap") MB/s" >&2
done
TD=$(median <"$W/res_direct"); TM=$(median <"$W/res_matched"); TC=$(median <"$W/res_chap")
RATIO=$(awk -v c="$TC" -v d="$TD" 'BEGIN { printf "%.2f", c / d }')
MRATIO=$(awk -v c="$TC" -v d="$TM" 'BEGIN { printf "%.2f", c / d }')
echo
echo "tunnel throughput, $((BENCH_BYTES / 1000000)) MB, median of $BENCH_RUNS, $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "  ssh -L via sshd:      $TD MB/s"
echo "  ssh -L via chaperone: $TC MB/s"
echo "  ssh -L via sshd, -c $BENCH_MATCHED_CIPHER: $TM MB/s"
echo "  ratio chaperone/direct: $RATIO (goal >= 1.0)"
echo "  ratio chaperone/direct with the same cipher: $MRATIO (goal >= 0.85)"
echo "  connection records: $(chap session list --json | grep -c '"kind": "tunnel"')"
