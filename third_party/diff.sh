#!/usr/bin/env bash
# Prints chaperone's patches to a vendored crate (russh, sntrup761 or avt) as one unified diff against the
# crates.io release it was vendored from (third_party/README.md): what to review, and what to offer
# upstream. Usage: third_party/diff.sh russh|sntrup761|avt
set -euo pipefail
crate=${1:?usage: third_party/diff.sh russh|sntrup761|avt}
cd "$(dirname "$0")"
[ -d "$crate" ] || { echo "no vendored crate named $crate in third_party/" >&2; exit 2; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$crate"/Cargo.toml | head -1)
# The registry copy: fetched by cargo when the patch is removed, or by `cargo fetch` in a scratch crate.
orig=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$crate-$version" 2>/dev/null | head -1 || true)
if [ -z "$orig" ]; then
    echo "$crate $version is not in the cargo registry cache; fetch it first:" >&2
    echo "  cargo init --vcs none /tmp/rf && cd /tmp/rf && cargo add $crate@=$version && cargo fetch" >&2
    exit 1
fi
# Sources, and the manifest (a patch may add a dependency); the crates' own tests/benches are left out.
{ diff -ruN "$orig/src" "$crate/src" || true; diff -uN "$orig/Cargo.toml" "$crate/Cargo.toml" || true; } |
    sed -e "s|$orig/|a/|g" -e "s| $crate/| b/|g" -e "s|^+++ $crate/|+++ b/|"
