"""Turns bench-results/results.jsonl into a table (keel vs etcd, ratio per row) and an SVG
plot of throughput against clients. Standard library only.

A row measured in several rounds (`BENCH_ROUNDS`) shows each system's median figures, the
median of the rounds' ratios (each round's keel run paired with the etcd run next to it in
time) and the lowest and highest of those ratios."""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
runs = defaultdict(list)
for r in rows:
    runs[(r["target"], r["workload"], r["clients"])].append(r)
# Each system's median figures per row; one round's run is that run.
by = {key: {stat: statistics.median(r[stat] for r in rs) for stat in ("throughput", "p50_ms", "p99_ms", "p999_ms")}
      for key, rs in runs.items()}
rounds = max(len(rs) for rs in runs.values())
order = ["put", "get", "staleget", "mixed", "keepalive", "broker"]
workloads = sorted({r["workload"] for r in rows}, key=lambda w: order.index(w) if w in order else 99)
clients = sorted({r["clients"] for r in rows})

lines = ["%-10s %7s | %10s %8s %8s %8s | %10s %8s %8s %8s | %8s %8s" % (
    "workload", "clients", "keel op/s", "p50 ms", "p99 ms", "p999 ms",
    "etcd op/s", "p50 ms", "p99 ms", "p999 ms", "ratio", "p99 ratio") + (" %11s" % "ratio range" if rounds > 1 else "")]
for w in workloads:
    for c in clients:
        k, e = by.get(("keel", w, c)), by.get(("etcd", w, c))
        if not k:
            continue
        def cols(r):
            return ("%10.0f %8.2f %8.2f %8.2f" % (r["throughput"], r["p50_ms"], r["p99_ms"], r["p999_ms"])) if r else " " * 37
        ratio = ""
        pairs = list(zip(runs[("keel", w, c)], runs.get(("etcd", w, c), [])))
        if pairs and all(er["throughput"] for _, er in pairs):
            ratios = [kr["throughput"] / er["throughput"] for kr, er in pairs]
            p99_ratios = [kr["p99_ms"] / er["p99_ms"] for kr, er in pairs]
            ratio = "%8.2f %8.2f" % (statistics.median(ratios), statistics.median(p99_ratios))
            if rounds > 1:
                ratio += " %5.2f-%5.2f" % (min(ratios), max(ratios))
        lines.append("%-10s %7d | %s | %s | %s" % (w, c, cols(k), cols(e), ratio))
table = "\n".join(lines)
(out / "table.txt").write_text(table + "\n")
print(table)

# Throughput against clients, one line per (system, workload), log-scale x.
import math
width, height, left, bottom = 900, 500, 70, 50
max_tp = max(r["throughput"] for r in rows) * 1.1
xs = {c: left + (width - left - 150) * (math.log(c) / math.log(max(clients)) if max(clients) > 1 else 0) for c in clients}
def y(tp):
    return height - bottom - (height - bottom - 30) * tp / max_tp
colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (width, height),
       '<rect width="100%" height="100%" fill="white"/>',
       '<text x="%d" y="20" font-size="16">throughput (op/s) against concurrent clients: keel solid, etcd dashed</text>' % left,
       '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (left, height - bottom, width - 150, height - bottom),
       '<line x1="%d" y1="30" x2="%d" y2="%d" stroke="black"/>' % (left, left, height - bottom)]
for c, x in xs.items():
    svg.append('<text x="%.0f" y="%d" text-anchor="middle">%d</text>' % (x, height - bottom + 18, c))
for i in range(6):
    tp = max_tp * i / 5
    svg.append('<text x="%d" y="%.0f" text-anchor="end">%.0f</text>' % (left - 5, y(tp) + 4, tp))
series = sorted({(r["target"], r["workload"]) for r in rows})
for i, (target, w) in enumerate(series):
    pts = [(xs[c], y(by[(target, w, c)]["throughput"])) for c in clients if (target, w, c) in by]
    # One colour per workload; keel solid, etcd dashed.
    color = colors[workloads.index(w) % len(colors)]
    dash = "" if target == "keel" else ' stroke-dasharray="6,4"'
    svg.append('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>' % (color, dash, " ".join("%.0f,%.0f" % p for p in pts)))
    svg.append('<text x="%d" y="%d" fill="%s">%s %s</text>' % (width - 140, 50 + 18 * i, color, target, w))
svg.append("</svg>")
(out / "throughput.svg").write_text("\n".join(svg))
print("\nwrote %s and %s" % (out / "table.txt", out / "throughput.svg"))
