#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 6) from its committed corpus; any crash,
# panic, timeout or memory-limit hit fails the run and leaves the input in fuzz/artifacts/TARGET/.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# CI calls it with the default. It builds with plain cargo and the flags cargo-fuzz 0.13 passes for
# `--sanitizer none` (libFuzzer's coverage instrumentation, debug assertions, overflow checks from
# Cargo.toml's release profile), which stable Rust accepts, so CI needs neither nightly nor cargo-fuzz
# (compiling cargo-fuzz alone takes longer than this whole step). The binaries land where cargo-fuzz puts
# them, so `cargo fuzz run -s none TARGET` works on the same build. Inputs the run finds go to a scratch
# corpus under fuzz/target/, never into fuzz/corpus/ (see README.md for growing and minimising it).
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-6}"
shift || true

# The longest input each target is given, and the memory a run may use. SFTP and exec inputs get room for
# a few frames and a bulk WRITE; config files, login names and command lines are short in real life.
max_len() {
    case "$1" in
        sftp_observer | scp_observer | exec_recording | asciicast | playback) echo 65536 ;;
        config | evidence_tar) echo 16384 ;;
        *) echo 4096 ;;
    esac
}
rss_limit_mb=1024

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^chaperone-fuzz$')
fi

triple="$(rustc -vV | sed -n 's/^host: //p')"
target_dir="${CARGO_TARGET_DIR:-target}"
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing \
 -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 -Ccodegen-units=1"

cargo fmt --manifest-path Cargo.toml -- --check
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
cargo build --locked --release --target "$triple" \
    --config 'profile.release.debug="line-tables-only"' "${bins[@]}"

failed=()
for t in "${targets[@]}"; do
    scratch="$target_dir/run-corpus/$t"
    rm -rf "$scratch"
    mkdir -p "$scratch" "artifacts/$t" "corpus/$t"
    log="$target_dir/run-$t.log"
    echo "fuzz: $t for ${seconds}s"
    if "$target_dir/$triple/release/$t" "$scratch" "corpus/$t" \
        -max_total_time="$seconds" -max_len="$(max_len "$t")" -rss_limit_mb="$rss_limit_mb" \
        -timeout=10 -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units)' "$log" | sed "s/^/fuzz: $t: /" || true
    else
        tail -n 60 "$log"
        echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/ (reproduce: $target_dir/$triple/release/$t FILE, from fuzz/)"
        failed+=("$t")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]}"
    exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each, no crash"
