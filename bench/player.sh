#!/usr/bin/env bash
# The browser's player against hostile recordings: what a session page makes Chromium do, as recorded
# ("raw": what builds before the emulator budget served) and as served now (the index's bounds,
# `playback::bounded_events`). A vendor controls the device's output and the window sizes; the page's
# asciinema-player runs upstream avt (WebAssembly, no budget). For each recording it plays the
# segmented files (recorder example `served_segments`) in headless Chromium and prints the wall time
# to the end, the main thread's long tasks (>50 ms) summed, and, for the hour-long one, a seek to its
# end. Not a test; no goal is asserted. ~3-6 min (the raw runs are the slow ones; each is cut at
# PLAYER_TIMEOUT s).
#
#   bench/player.sh
#   BENCH_BUILD=0 PLAYER_TIMEOUT=60 bench/player.sh
#
# Needs: python3, node with playwright-core (tests/e2e: npm ci), /usr/bin/chromium (CHROMIUM overrides).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${BENCH_BUILD:=1}" "${PLAYER_TIMEOUT:=120}" "${CARGO_TARGET_DIR:=$ROOT/target}"
die() { echo "bench: $*" >&2; exit 2; }
for t in python3 node; do command -v "$t" >/dev/null || die "missing $t"; done
[[ -d $ROOT/tests/e2e/node_modules/playwright-core ]] || die "no playwright-core: (cd tests/e2e && npm ci)"
[[ $BENCH_BUILD == 1 ]] && (cd "$ROOT" && cargo build --release -q -p chaperone-recorder --example served_segments)
SERVE="$CARGO_TARGET_DIR/release/examples/served_segments"
[[ -x $SERVE ]] || die "missing $SERVE"
W=$(mktemp -d -t chaperone-player-bench.XXXXXX)
HTTP=
cleanup() { [[ -n $HTTP ]] && kill "$HTTP" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT INT TERM
cp "$ROOT/web-approval/static/asciinema-player.min.js" "$ROOT/web-approval/static/asciinema-player.css" "$W/"
ln -s "$ROOT/tests/e2e/node_modules" "$W/node_modules"
cp "$ROOT/bench/player/page.html" "$ROOT/bench/player/play.mjs" "$W/"

# The recordings (asciicast v2), each a way a vendor's session could hold an auditor's tab.
python3 - "$W" <<'PY'
import json, sys
w = sys.argv[1]
def cast(name, cols, rows, events):
    with open(f"{w}/{name}.cast", "w") as f:
        f.write(json.dumps({"version": 2, "width": cols, "height": rows, "timestamp": 1}) + "\n")
        for e in events:
            f.write(json.dumps(e) + "\n")
red = "\x1b[41m\x1b[2J"
# One wrapped line across the largest screen, then the window narrowed to one column and back.
line, ev, t = "x" * (1000 * 499), [], 0.1
for _ in range(10):
    ev += [[t, "r", "1000x500"], [t + .01, "o", "\x1b[H" + line], [t + .02, "r", "999x500"], [t + .03, "r", "1x500"]]
    t += .1
cast("narrow", 1000, 500, ev + [[t, "o", "\x1b[0m\x1b[Hdone"]])
# A red full screen whose height changes ten times a second for 20 s (each a redraw of the page).
ev = [[0.05, "o", red]] + [[0.1 + i / 10, "r", f"1000x{499 + i % 2}"] for i in range(200)]
cast("heights", 1000, 500, ev + [[20.1, "o", "\x1b[0m\x1b[Hdone"]])
# An hour of a red full screen narrowed to 10 columns and widened again every 5 s (a seek replays).
ev, t = [[0.1, "o", red]], 1.0
while t < 3600:
    ev += [[t, "r", "10x500"], [t + 2.5, "r", "1000x500"]]
    t += 5
cast("hour", 1000, 500, ev + [[3600.0, "o", "\x1b[0m\x1b[Hdone"]])
# 100,000 screen fills (DECALN) in 10 s.
cast("fills", 1000, 500, [[i / 10, "o", "\x1b#8" * 1000] for i in range(100)] + [[10.0, "o", "\x1b[Hdone"]])
# The alternate screen entered and left 100 times every 0.1 s for 20 s (each entry a new screen).
cast("alt", 1000, 500, [[i / 10, "o", "\x1b[?1049h\x1b[?1049l" * 100] for i in range(200)]
     + [[20.0, "o", "\x1b[Hdone"]])
# 10,000 REPs asking for 65,535 characters each.
cast("reps", 80, 24, [[0.1, "o", "x\x1b[65535b" * 10000], [1.0, "o", "\x1b[2J\x1b[Hdone"]])
# For scale, nothing hostile: text scrolling across the largest screen for 10 s (every frame the page
# draws is a full screen: what a huge terminal costs it whatever the output).
cast("text", 1000, 500, [[i / 10, "o", ("lorem ipsum dolor " * 50 + "\r\n") * 100] for i in range(100)]
     + [[10.0, "o", "done"]])
# A person: a clear loop, an editor's redraws and a few window changes at 200 x 50, for 20 s.
ev, t = [], 0.0
for i in range(200):
    ev.append([t, "o", f"\x1b[H\x1b[2J{'line of the file ' * 11}\r\n" * 40 + "-- INSERT --"])
    if i % 50 == 25:
        ev.append([t + 0.05, "r", "160x50" if i % 100 == 25 else "200x50"])
    t += 0.1
cast("person", 200, 50, ev + [[t, "o", "done"]])
PY

(cd "$W" && exec python3 -m http.server 0 --bind 127.0.0.1 >"$W/http.log" 2>&1) & HTTP=$!
for _ in $(seq 100); do PORT=$(grep -o 'port [0-9]*' "$W/http.log" | grep -o '[0-9]*' || true); [[ -n $PORT ]] && break; sleep 0.1; done
[[ -n ${PORT:-} ]] || die "the page server did not start"

printf '%-8s %-6s %-52s %10s %12s %10s\n' recording served segments "to end s" "long tasks s" "seek ms"
for name in person text narrow heights hour fills alt reps; do
    for how in raw served; do
        out="$W/$name-$how"
        info=$("$SERVE" "$W/$name.cast" "$out" $([[ $how == raw ]] && echo raw))
        seek=$([[ $name == hour ]] && echo 3590 || echo "")
        res=$(cd "$W" && timeout $((PLAYER_TIMEOUT + 30)) node play.mjs "http://127.0.0.1:$PORT/page.html?cast=$name-$how/play.json" "$PLAYER_TIMEOUT" "$seek" 2>&1 | tail -1) || true
        printf '%-8s %-6s %-52s %s\n' "$name" "$how" "$info" "$res"
    done
done
