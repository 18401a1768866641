#!/usr/bin/env bash
# Issue 11's benchmark (not a timed test): text search over BENCH_SESSIONS (10,000) sessions holding
# BENCH_MB (1,024) MB of recordings, through a running chaperone's JSON API, and opening a BENCH_BIG_MB
# (200) MB recording in the player (its index and first segment: what the browser needs to start
# playing). Builds in release and runs tests/it/search.rs's ignored `bench_search_and_open`; prints the
# figures. Smaller runs: BENCH_SESSIONS=1000 BENCH_MB=100 BENCH_BIG_MB=20 bench/search.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --release --locked --test it -- --ignored --nocapture --test-threads 1 bench_search_and_open
