#!/usr/bin/env python3
"""Renders the Grafana dashboard's panels (files/dashboard.json) as PNG
plots from the harness' real Prometheus: the same expressions, evaluated
over the window of the last `make demo` run (target/demo-window), else the
--minutes before the operator was last scraped. `make plots` runs it.

Grafana is not packaged here; these plots are how the guide shows what the
dashboard shows.
"""
import argparse
import datetime as dt
import json
import re
import pathlib
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "charts" / "freshen" / "files" / "dashboard.json"


def prometheus_url():
    env = ROOT / ".e2e" / "env"
    for line in env.read_text().splitlines():
        if line.startswith("FRESHEN_E2E_PROMETHEUS_URL="):
            return line.split("=", 1)[1]
    raise SystemExit(f"{env} names no Prometheus: run `make demo` first")


def get(url, path, **params):
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}{path}?{query}", timeout=30) as answer:
        body = json.load(answer)
    if body.get("status") != "success":
        raise SystemExit(f"Prometheus refused {params}: {body}")
    return body["data"]["result"]


def expand(expr, step):
    return expr.replace("$__rate_interval", step).replace("$namespace", ".*")


def legend(fmt, labels):
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return re.sub(r"\{\{[a-z_]+\}\}", "all", out)


def draw(ax, panel, url, start, end):
    kind = panel["type"]
    ax.set_title(panel["title"], fontsize=9)
    ax.tick_params(labelsize=7)
    if kind == "timeseries":
        for target in panel["targets"]:
            series = get(url, "/api/v1/query_range", query=expand(target["expr"], "1m"),
                         start=start.timestamp(), end=end.timestamp(), step="2s")
            # Series that stayed 0 the whole time (outcomes that did not
            # happen) would only crowd the legend.
            moving = [s for s in series if any(float(v) != 0 for _, v in s["values"])]
            for s in moving or series[:1]:
                xs = [dt.datetime.fromtimestamp(float(t)) for t, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]
                ax.plot(xs, ys, label=legend(target.get("legendFormat"), s["metric"])[:40])
        ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%H:%M:%S"))
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left")
        return
    results = []
    for target in panel["targets"]:
        for s in get(url, "/api/v1/query", query=expand(target["expr"], "1m"), time=end.timestamp()):
            labels = s["metric"]
            name = legend(target.get("legendFormat"), labels)
            if "workload" in labels:
                name = f'{labels["workload"]}/{labels.get("container", "")}'
            results.append((name, float(s["value"][1])))
    if kind == "stat":
        value = results[0][1] if results else float("nan")
        ax.text(0.5, 0.45, f"{value:g}", ha="center", va="center", fontsize=28)
        ax.set_axis_off()
    elif kind == "histogram":
        ax.hist([v for _, v in results], bins=20)
        ax.set_xlabel("days", fontsize=7)
        ax.set_ylabel("containers", fontsize=7)
    else:  # table: one bar per row
        results.sort(key=lambda r: r[1])
        names = [n[:40] for n, _ in results[-12:]]
        ax.barh(names, [v for _, v in results[-12:]])
        ax.tick_params(axis="y", labelsize=7)
        if panel["fieldConfig"]["defaults"].get("unit") == "percentunit":
            ax.axvline(1.0, color="red", linewidth=1)
            ax.set_xlabel("share of the limit (1 = at the limit)", fontsize=7)


def last_scrape(url):
    """When the operator was last scraped: the demo's operator has stopped
    by now, and its series went stale with it."""
    now = dt.datetime.now()
    series = get(url, "/api/v1/query_range", query="freshen_leader",
                 start=(now - dt.timedelta(hours=6)).timestamp(), end=now.timestamp(), step="5s")
    times = [float(t) for s in series for t, _ in s["values"]]
    if not times:
        raise SystemExit("Prometheus has no freshen_leader in the last 6 hours: run `make demo` first")
    return dt.datetime.fromtimestamp(max(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/src/plots")
    parser.add_argument("--minutes", type=int, default=3)
    args = parser.parse_args()
    url = prometheus_url()
    dashboard = json.loads(DASHBOARD.read_text())
    window = ROOT / "target" / "demo-window"
    if window.exists():
        # The last `make demo` run.
        first, last = (float(x) for x in window.read_text().split())
        start = dt.datetime.fromtimestamp(first)
        end = dt.datetime.fromtimestamp(last)
    else:
        end = last_scrape(url)
        start = end - dt.timedelta(minutes=args.minutes)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    panels = dashboard["panels"]
    stats = [p for p in panels if p["type"] == "stat"]
    charts = [p for p in panels if p["type"] != "stat"]
    fig, axes = plt.subplots(1, len(stats), figsize=(2.2 * len(stats), 1.8))
    for ax, panel in zip(axes, stats):
        draw(ax, panel, url, start, end)
    fig.suptitle("freshen: fleet at a glance", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "dashboard-stats.png", dpi=110)
    cols = 3
    rows = (len(charts) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.6 * rows))
    for ax, panel in zip(axes.flat, charts):
        draw(ax, panel, url, start, end)
    for ax in list(axes.flat)[len(charts):]:
        ax.set_axis_off()
    fig.suptitle(f"freshen dashboard, from the demo's Prometheus ({start:%H:%M}-{end:%H:%M})", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "dashboard.png", dpi=100)
    print(f"wrote {out / 'dashboard-stats.png'} and {out / 'dashboard.png'}")


if __name__ == "__main__":
    main()
