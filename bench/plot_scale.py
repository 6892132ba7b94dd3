#!/usr/bin/env python3
"""Plots the newest bench/results/scale-<date>.csv (make bench-scale):
first complete assessment and operator RSS against the number of opted-in
Deployments, on one figure, to bench/results/scale-<date>.png."""
import csv
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results = pathlib.Path(__file__).resolve().parent / "results"
latest = sorted(results.glob("scale-*.csv"))[-1]
rows = list(csv.DictReader(latest.open()))
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
styles = ["o-", "s--", "^:", "d-."]
builds = list(dict.fromkeys(r["build"] for r in rows))
for build, style in zip(builds, styles):
    mine = [r for r in rows if r["build"] == build]
    if not mine:
        continue
    n = [int(r["workloads"]) for r in mine]
    left.plot(n, [float(r["first_assessment_s"]) for r in mine], style, label=build)
    right.plot(n, [float(r["rss_idle_mib"]) for r in mine], style, label=build)
left.axhline(30, color="grey", linestyle=":", linewidth=1, label="goal: 30 s at 10,000")
right.axhline(128, color="grey", linestyle=":", linewidth=1, label="goal: 128 MiB")
left.set_title("first complete assessment (s)")
right.set_title("operator RSS after it (MiB)")
for ax in (left, right):
    ax.set_xlabel("opted-in Deployments (+2,000 ignored)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
fig.suptitle("freshen at scale: release build, cluster-wide, 2 cores ('freshen': this build; others: earlier commits)")
fig.tight_layout()
out = latest.with_suffix(".png")
fig.savefig(out, dpi=110)
print(f"wrote {out}")
