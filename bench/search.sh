#!/usr/bin/env bash
# Issue 11's benchmark (not a timed test): text search over BENCH_SESSIONS (10,000) sessions holding
# BENCH_MB (1,024) MB of recordings, through a running chaperone's JSON API, and opening a BENCH_BIG_MB
# (200) MB recording in the player: its index and first segment over HTTP (what the browser needs to
# start playing), and in Chromium from the click on the session's link until the player's time moves
# (tests/e2e/open.mjs; needs `npm ci --prefix tests/e2e` and /usr/bin/chromium). Builds in release and
# runs tests/it/search.rs's ignored `bench_search_and_open`; prints the figures (bench/README.md).
# Smaller runs: BENCH_SESSIONS=1000 BENCH_MB=100 BENCH_BIG_MB=20 bench/search.sh
# BENCH_DEV=1 skips the release build of every dependency: the dev profile (dependencies at opt-level 1,
# as the tests have them) with chaperone's own crates at opt-level 3 (how bench/README.md's figures of
# 2026-12-02 were taken, on a machine shared with other builds).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=(--release)
if [ "${BENCH_DEV:-0}" = 1 ]; then
    profile=()
    for p in chaperone chaperone-recorder chaperone-web-approval chaperone-model; do
        profile+=(--config "profile.dev.package.$p.opt-level=3")
    done
fi
exec cargo test "${profile[@]}" --locked -p chaperone --test it -- --ignored --nocapture --test-threads 1 bench_search_and_open
