"""``make bench``: the quick benchmarks, one after another, at their default sizes, then a summary.

    .venv/bin/python -m benchmarks.run_all            # the quick set (QUICK)
    .venv/bin/python -m benchmarks.run_all bench_icm  # any benchmarks by module name
    .venv/bin/python -m benchmarks.run_all --list     # every benchmark and what it measures

Each runs as ``python -m benchmarks.<name>`` in its own process (as the docs quote them), its output
passed through; the summary gives each one's wall time and exit status, and the exit status is 1
when any failed. The quick set: the benchmarks that start no Ray and train no model, and finish in
minutes on two cores; the others start Ray, train models, or (bench_icm: faiss LSQ on 20,000
vectors) run for many minutes; their docs pages give their own commands and sizes.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

import benchmarks

QUICK = ["margin_loss", "bench_search", "bench_shards"]


def available() -> list[str]:
    """Every runnable benchmark module (``benchmarks/*.py`` with a ``__main__`` block), sorted."""
    here = Path(benchmarks.__file__).parent
    names = []
    for m in pkgutil.iter_modules([str(here)]):
        if m.ispkg or m.name == "run_all":
            continue
        if 'if __name__ == "__main__":' in (here / f"{m.name}.py").read_text():
            names.append(m.name)
    return sorted(names)


def summary_line(name: str) -> str:
    doc = importlib.import_module(f"benchmarks.{name}").__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def run(names: list[str], write=print) -> list[tuple[str, int, float]]:
    """Run each benchmark in turn; returns (name, exit status, seconds) per benchmark."""
    results = []
    for name in names:
        write(f"==== benchmarks.{name}", flush=True)
        started = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"])
        results.append((name, rc, time.perf_counter() - started))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help=f"benchmark modules to run (default: {' '.join(QUICK)})")
    p.add_argument("--list", action="store_true", help="list every benchmark and exit")
    a = p.parse_args(argv)
    known = available()
    if a.list:
        for name in known:
            print(f"{name:<24} {'quick ' if name in QUICK else '      '}{summary_line(name)}")
        return 0
    unknown = [n for n in a.names if n not in known]
    if unknown:
        print(f"run_all: unknown benchmark {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    results = run(a.names or QUICK)
    print("==== summary")
    for name, rc, seconds in results:
        print(f"{name:<24} {'ok' if rc == 0 else f'FAILED (exit {rc})':<16} {seconds:8.1f} s")
    return 1 if any(rc for _, rc, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
