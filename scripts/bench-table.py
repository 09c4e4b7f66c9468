#!/usr/bin/env python3
"""Print a Markdown table of criterion results (mean and 95% CI) from target/criterion.

Usage: scripts/bench-table.py [GROUP_PREFIX ...]
"""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
prefixes = sys.argv[1:]


def fmt(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


rows = []
for estimates in sorted(root.glob("**/new/estimates.json")):
    bench = json.loads((estimates.parent / "benchmark.json").read_text())
    name = bench["full_id"]
    if prefixes and not any(name.startswith(p) for p in prefixes):
        continue
    mean = json.loads(estimates.read_text())["mean"]
    ci = mean["confidence_interval"]
    throughput = bench.get("throughput") or {}
    per = ""
    if "Elements" in throughput and throughput["Elements"]:
        per = fmt(mean["point_estimate"] / throughput["Elements"])
    rows.append((name, fmt(mean["point_estimate"]), f"{fmt(ci['lower_bound'])} – {fmt(ci['upper_bound'])}", per))

print("| benchmark | mean | 95% CI | per element |")
print("|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(row) + " |")
