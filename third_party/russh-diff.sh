#!/usr/bin/env bash
# Prints chaperone's patches to russh as one unified diff against the crates.io release it was vendored
# from (third_party/README.md): what to review, and what to offer upstream.
set -euo pipefail
cd "$(dirname "$0")"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' russh/Cargo.toml | head -1)
# The registry copy: fetched by cargo when the patch is removed, or by `cargo fetch` in a scratch crate.
orig=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/russh-"$version" 2>/dev/null | head -1)
if [ -z "$orig" ]; then
    echo "russh $version is not in the cargo registry cache; fetch it first:" >&2
    echo "  cargo init --vcs none /tmp/rf && cd /tmp/rf && cargo add russh@=$version && cargo fetch" >&2
    exit 1
fi
diff -ruN "$orig/src" russh/src | sed -e "s|$orig/|a/|g" -e "s| russh/src/| b/src/|g" -e "s|^+++ russh/|+++ b/|" || true
