#!/usr/bin/env python3
"""Per-step device time by kernel, from two ncu CSV files of `lmx bench --decode` runs that
differ only in how many tokens they generate (bench/step_kernels.sh makes them).

Each file holds every kernel's `gpu__time_duration.sum`. The difference of the two, per
kernel name, divided by the extra steps, leaves only what the extra decode steps ran: the
load, the prefill and the setup are the same in both runs and cancel.

    step_kernels.py SHORT.csv LONG.csv STEPS
"""
import collections
import csv
import sys

UNITS_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}


def kernel_times(path):
    """{kernel name (first 70 characters): [launches, µs]} over the file's rows."""
    rows = [r for r in csv.reader(open(path, newline="")) if len(r) > 10]
    if not rows:
        sys.exit(f"step_kernels: {path} holds no ncu rows (did ncu run? see its output)")
    head = rows[0]
    try:
        name, value, unit = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
    except ValueError:
        sys.exit(f"step_kernels: {path} is not ncu's --csv output (no Kernel Name, Metric Value, Metric Unit)")
    out = collections.defaultdict(lambda: [0, 0.0])
    for r in rows[1:]:
        if r[unit] not in UNITS_US:
            sys.exit(f"step_kernels: {path}: unknown time unit {r[unit]!r}")
        entry = out[r[name][:70]]
        entry[0] += 1
        entry[1] += float(r[value].replace(",", "")) * UNITS_US[r[unit]]
    return out


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__)
    short, long, steps = kernel_times(argv[1]), kernel_times(argv[2]), int(argv[3])
    if steps <= 0:
        sys.exit("step_kernels: STEPS must be positive")
    per_step = []
    for k in set(short) | set(long):
        (n1, t1), (n2, t2) = short.get(k, (0, 0.0)), long.get(k, (0, 0.0))
        n, t = (n2 - n1) / steps, (t2 - t1) / steps
        if abs(t) >= 0.5:  # µs a step; smaller differences are ncu's noise
            per_step.append((t, n, k))
    per_step.sort(reverse=True)
    total = sum(t for t, _, _ in per_step)
    print(f"{'us/step':>10} {'launches':>9}  kernel")
    for t, n, k in per_step:
        print(f"{t:10.1f} {n:9.1f}  {k}")
    print(f"{total:10.1f} {'':9}  all (ncu runs each kernel alone: more than the step takes)")


if __name__ == "__main__":
    main(sys.argv)
