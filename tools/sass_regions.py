#!/usr/bin/env python3
"""Where a kernel's instructions go, from ncu's per-instruction (SASS) page.

A kernel bound by issuing instructions often has no hot loop: most of its code runs once
per warp, and the question is which stretch of it costs what. This groups the SASS, in
address order, into windows of N instructions and prints for each window its share of the
executed instructions and of the stall samples, with its commonest opcodes; then the first
and last address of a few landmark opcodes (barriers, copies, tensor-core products), which
place the windows in the source.

Make the input on the GPU machine (one launch of the kernel):

  ncu -k regex:self_attention --launch-skip 2 --launch-count 1 --section SourceCounters \\
      --section WarpStateStats --page source --print-source sass --csv \\
      build-gpu/tools/lmx/lmx bench MODEL --device cuda --classify | gzip > sass.csv.gz

then:  tools/sass_regions.py sass.csv.gz [--window 60] [--min-share 1]
"""
import argparse
import collections
import csv
import gzip
import sys

LANDMARKS = ["BAR.SYNC", "LDGSTS", "UBLKCP", "UTMALDG", "SYNCS", "HMMA", "HGMMA", "LDSM", "MUFU",
             "SHFL", "STG", "STL", "LDL", "CALL", "EXIT"]


def read_rows(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, EOFError) as e:
        sys.exit(f"sass_regions: cannot read {path}: {e}")
    header_at = next((i for i, r in enumerate(rows) if r and r[0] == "Address"), None)
    if header_at is None:
        sys.exit(f"sass_regions: {path} has no 'Address' header: was it made with --page source --csv?")
    header = rows[header_at]
    need = ["Source", "Instructions Executed", "Warp Stall Sampling (All Samples)"]
    missing = [n for n in need if n not in header]
    if missing:
        sys.exit(f"sass_regions: {path} lacks the columns {missing}: add --section SourceCounters")
    cols = [header.index(n) for n in need]
    out = []
    for r in rows[header_at + 1:]:
        if len(r) != len(header):
            continue
        try:
            out.append((r[cols[0]].strip(), int(r[cols[1]] or 0), int(r[cols[2]] or 0)))
        except ValueError:
            continue
    if not out:
        sys.exit(f"sass_regions: {path} has no instruction rows")
    return out


def opcode(source):
    words = source.split()
    if words and words[0].startswith("@"):  # a predicate guard
        words = words[1:]
    return words[0].split(".")[0] if words else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="ncu --page source --print-source sass --csv output (.gz or plain)")
    ap.add_argument("--window", type=int, default=60, help="instructions per window (60)")
    ap.add_argument("--min-share", type=float, default=1.0,
                    help="print windows with at least this percent of instructions or samples (1)")
    args = ap.parse_args()
    rows = read_rows(args.csv)
    executed = sum(r[1] for r in rows) or 1
    samples = sum(r[2] for r in rows) or 1
    print(f"{len(rows)} instructions in the kernel, {executed:,} executed (warp level), {samples:,} stall samples")
    print(f"{'window':>11}  {'executed':>8}  {'samples':>7}  commonest opcodes (percent of all executed)")
    for start in range(0, len(rows), args.window):
        part = rows[start:start + args.window]
        e = sum(r[1] for r in part)
        s = sum(r[2] for r in part)
        if 100 * e / executed < args.min_share and 100 * s / samples < args.min_share:
            continue
        ops = collections.Counter()
        for src, n, _ in part:
            ops[opcode(src)] += n
        top = " ".join(f"{op}:{100 * n / executed:.1f}" for op, n in ops.most_common(6))
        print(f"{start:5d}-{start + len(part):5d}  {100 * e / executed:7.1f}%  {100 * s / samples:6.1f}%  {top}")
    print("landmarks (first and last instruction index, count):")
    for mark in LANDMARKS:
        where = [i for i, (src, _, _) in enumerate(rows) if mark in src]
        if where:
            print(f"  {mark:9s} {where[0]:5d} {where[-1]:5d} {len(where):4d}")


if __name__ == "__main__":
    main()
