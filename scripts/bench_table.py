#!/usr/bin/env python3
"""Prints criterion results as markdown tables with ratios against a baseline.

Usage: scripts/bench_table.py GROUP BASELINE [CANDIDATE ...]
Reads target/criterion/GROUP/<function>/<size>/new/estimates.json (median point estimates), as
written by the last `cargo bench` run, and prints one row per size.
"""
import json
import pathlib
import sys


def median_ns(root, group, function, size):
    path = root / group / function / size / "new" / "estimates.json"
    return json.loads(path.read_text())["median"]["point_estimate"]


def fmt(ns):
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"


def main():
    group, baseline, *candidates = sys.argv[1:]
    root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
    sizes = sorted((p.name for p in (root / group / baseline).iterdir() if p.name.isdigit()), key=int)
    head = f"| size | {baseline} |" + "".join(f" {c} | {c} / {baseline} |" for c in candidates)
    print(head)
    print("|---" * (2 + 2 * len(candidates)) + "|")
    for size in sizes:
        base = median_ns(root, group, baseline, size)
        row = f"| {size} B | {fmt(base)} |"
        for c in candidates:
            t = median_ns(root, group, c, size)
            row += f" {fmt(t)} | {t / base:.2f}× |"
        print(row)


if __name__ == "__main__":
    main()
