#!/usr/bin/env python3
"""Plots the newest bench/results/peers-<date>-*.csv (make bench-peers):
one complete pass and peak memory against the number of Deployments for
freshen, the crane script and descheduler's PodLifeTime, and the rollback
latency of each tool, to bench/results/peers-<date>.png."""
import csv
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results = pathlib.Path(__file__).resolve().parent / "results"
ages_csv = sorted(results.glob("peers-*-ages.csv"))[-1]
date = ages_csv.name[len("peers-"):-len("-ages.csv")]
ages = list(csv.DictReader(ages_csv.open()))
rollback_csv = results / f"peers-{date}-rollback.csv"
rollbacks = list(csv.DictReader(rollback_csv.open())) if rollback_csv.exists() else []

fig, (time_ax, rss_ax, rb_ax) = plt.subplots(1, 3, figsize=(15, 4.8))
styles = {"freshen": "o-", "crane script": "s--", "descheduler PodLifeTime": "^:"}
notes = {"descheduler PodLifeTime": ", one pass over its synced cache", "freshen": ", from process start"}
for tool, style in styles.items():
    mine = [r for r in ages if r["tool"] == tool]
    if not mine:
        continue
    n = [int(r["workloads"]) for r in mine]
    label = f"{tool} ({mine[0]['what']}{notes.get(tool, '')})"
    time_ax.plot(n, [float(r["seconds"]) for r in mine], style, label=label)
    rss_ax.plot(n, [float(r["rss_mib"]) for r in mine], style, label=label)
time_ax.set_title("one complete pass (s)")
rss_ax.set_title("peak resident memory (MiB)")
for ax in (time_ax, rss_ax):
    ax.set_xlabel("opted-in Deployments (+2,000 ignored)")
    ax.set_ylim(bottom=0)
# One legend under the two line plots: inside them it hid the largest points.
handles, labels = time_ax.get_legend_handles_labels()
fig.legend(handles, labels, loc="lower left", ncol=3, fontsize=8, frameon=False)

tools = list(dict.fromkeys(r["tool"] for r in rollbacks))
for i, tool in enumerate(tools):
    values = [float(r["seconds"]) for r in rollbacks if r["tool"] == tool]
    rb_ax.scatter([i] * len(values), values, alpha=0.6)
    values.sort()
    median = values[len(values) // 2] if len(values) % 2 else sum(values[len(values) // 2 - 1:len(values) // 2 + 1]) / 2
    rb_ax.hlines(median, i - 0.25, i + 0.25, color="black")
rb_ax.set_xticks(range(len(tools)), tools)
rb_ax.set_ylim(bottom=0)
rb_ax.set_title("crash-looping canary -> rollback started (s)\n(dots: runs; bar: median)")

fig.suptitle("freshen beside its peers, one 2-core machine, same cluster and workloads")
fig.tight_layout(rect=(0, 0.06, 1, 1))
out = results / f"peers-{date}.png"
fig.savefig(out, dpi=110)
print(f"wrote {out}")
