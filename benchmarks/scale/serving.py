"""Shared by the serving-side scaling scripts (encode job, search, evaluation): each measured point
runs in a fresh Python process, so its ``ru_maxrss`` is that point's own peak memory and nothing
left over from a larger point inflates a smaller one.

    .venv/bin/python -m benchmarks.scale.search       # queries/s and memory vs database size
    .venv/bin/python -m benchmarks.scale.evaluation   # mAP evaluation cost vs database size
    .venv/bin/python -m benchmarks.scale.encode_job   # encode job throughput and memory vs corpus size
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMG = REPO / "docs" / "img" / "scaling"

_CHILD = """
import importlib, json, resource, sys
mod, fn = sys.argv[1].rsplit(":", 1)
row = getattr(importlib.import_module(mod), fn)(**json.loads(sys.argv[2]))
row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print("ROW " + json.dumps(row))
"""


def in_fresh_process(target: str, **kwargs) -> dict:
    """Call ``module:function(**kwargs)`` in a new interpreter; its returned dict plus ``peak_rss_mb``."""
    r = subprocess.run([sys.executable, "-c", _CHILD, target, json.dumps(kwargs)], cwd=REPO,
                       capture_output=True, text=True)
    rows = [s for s in r.stdout.splitlines() if s.startswith("ROW ")]
    if r.returncode or not rows:
        raise RuntimeError(f"{target}({kwargs}) failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(rows[-1][4:])


def rss_mb() -> float:
    """This process's resident memory now (MB), to separate the imports' share from a point's own."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def children_rss_mb() -> float:
    """Resident memory of this process's child processes now (MB): the encode job's reading workers."""
    import psutil

    return sum(c.memory_info().rss for c in psutil.Process().children(recursive=True)) / 2**20


def conditions() -> str:
    """Date and load at measurement time (the box is shared; timings are read against this line)."""
    load = os.getloadavg()
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
            f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs")


def report(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


def finish(rows: list[dict], rows_path: str | None, plot, plot_path: str | None) -> None:
    """The closing line, the rows as JSON (``--rows``) and the plot (``--plot``, empty: none)."""
    print(f"# done, {conditions()}")
    if rows_path:
        Path(rows_path).write_text(json.dumps(rows))
    if plot_path:
        plot(rows, plot_path)


def by(rows: list[dict], key: str) -> dict:
    """Rows grouped by ``row[key]`` (first-seen order), each group sorted by N."""
    return {v: sorted((r for r in rows if r[key] == v), key=lambda r: r["n"])
            for v in dict.fromkeys(r[key] for r in rows)}


def plot_slopes(path: str, title: str, xlabel: str, ylabel: str, series: dict, what: str) -> None:
    """``benchmarks.scale.loglog.plot_loglog``, then one line per fitted slope."""
    from benchmarks.scale.loglog import plot_loglog

    for name, slope in plot_loglog(path, title, xlabel, ylabel, series).items():
        print(f"# slope of {what} vs N, {name}: {slope:.2f}")
