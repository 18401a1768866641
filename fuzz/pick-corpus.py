#!/usr/bin/env python3
"""Picks the committed corpus of one target from a long run's: the seed-* and regression-* files, then
the K inputs that add the most coverage, greedily (smaller first on ties). libFuzzer's own -merge keeps
every input that adds any feature, hundreds per target; this keeps the corpus small enough to commit.

    CONTROL_FILE comes from a set-cover merge with hit counts ignored (features = edges), e.g.
    target/x86_64-unknown-linux-gnu/release/TARGET -set_cover_merge=1 -use_counters=0 -max_len=65536 \\
        -merge_control_file=/tmp/TARGET.ctl /tmp/empty corpus/TARGET corpus-new/TARGET

usage: pick-corpus.py CONTROL_FILE K OUTDIR
"""
import os
import shutil
import sys


def main():
    control, k, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    lines = open(control).read().split("\n")
    n = int(lines[0])
    files = lines[2 : 2 + n]
    features, size = {}, {}
    for line in lines[2 + n :]:
        part = line.split()
        if part and part[0] == "STARTED":
            size[int(part[1])] = int(part[2])
        elif part and part[0] == "FT":
            features[int(part[1])] = set(part[2:])
    every = set().union(*features.values()) if features else set()
    chosen, covered = [], set()
    for i, path in enumerate(files):
        if os.path.basename(path).startswith(("seed-", "regression-")):
            chosen.append(i)
            covered |= features.get(i, set())
    kept = len(chosen)
    while len(chosen) - kept < k:
        best = max(
            (i for i in features if i not in chosen),
            key=lambda i: (len(features[i] - covered), -size.get(i, 0)),
            default=None,
        )
        if best is None or not features[best] - covered:
            break
        chosen.append(best)
        covered |= features[best]
    os.makedirs(out, exist_ok=True)
    for i in chosen:
        shutil.copy(files[i], os.path.join(out, os.path.basename(files[i])))
    print(f"{len(chosen)} files ({kept} seeds and regressions), {len(covered)}/{len(every)} features")


if __name__ == "__main__":
    main()
