"""`wsdhq demo` / `make demo`: the whole pipeline on the built-in demo data, as a cluster user runs it.

Stages, each skipped when its output already exists (``--redo`` names stages to run again):
  data      demo shards (sklearn digits, simulated weak tags, the 64 pixel values as feat.npy)
  tags      tag semantics artifact (a Ray job: distributed counting, vectors, DBSCAN merge)
  train     one Ray job: WSDHQ at 8/16/24/32 bits (one additive model each) and WSDHQ-progressive
            (one model, every length). The longest WSDHQ model is a Ray Train run on ``workers=`` DDP
            workers (default 2); the others run the same loop in Ray Train's local mode
            (``scaling.num_workers=0``), one after another in one process, beside it
  encode    one Ray job: every model's query, database and train sets -> code sets (in one process
            of the job: the demo's ~3,000 samples are less work than an actor pool's start-up)
  evaluate  mAP tables against faiss PQ / OPQ / RQ / LSQ and random codes trained on the same
            inputs (the 64 pixel values, L2-normalised: their better reading), merged into one table

Why features mode on the pixels (configs/demo.yaml says more): the raw pixels are the strong
baseline on these 8x8 digits, so a model that beats faiss on them has learned from the tags; and an
MLP trains in seconds, so the demo's minutes go to the pipeline, not to a CNN on 2 CPUs.

Where the minutes went, and why the stages are shaped as they are (README, "Wall time"): a Ray Train
run on 2 workers costs ~35 s of start-up and shutdown (a driver, the controller, two worker
processes importing torch, the process group) for ~10 s of training, so the demo runs ONE such run
and trains the other models in local mode, which runs the identical ``train_loop_per_worker`` in
the calling process with no controller or workers; one job per stage rather than per model, and
one process per job lane, so Python, torch and faiss are imported once per lane, not per model.

Ray: a local head this process starts (token auth on, its own temp dir) and stops at the end,
unless ``--address`` points at a running cluster. Every stage except ``data`` and ``evaluate`` goes
through the job API, exactly as on a cloud cluster; paths are absolute because a job runs in its
own unpacked copy of the working directory.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from shards.config import ConfigError, apply_override, from_dict

REPO = Path(__file__).resolve().parents[1]
STAGES = ("data", "tags", "train", "encode", "evaluate")
JOB_ENV = {"PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cpu"}
# On the head the demo starts itself (not on a cluster given by --address): a one-machine head is
# never drained for preemption, so Ray Train's preemption watcher, one more actor process per
# training run, has nothing to watch.
LOCAL_HEAD_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@dataclass
class DemoConfig:
    out: str = "runs/demo"                 # everything the demo writes, under the repo by default
    config: str = "configs/demo.yaml"      # the training config the train jobs start from
    tags_config: str = "configs/tags_demo.yaml"  # tag semantics settings (co-occurrence vectors: see its header)
    workers: int = 2                       # Ray Train (DDP) workers of the distributed run(s)
    # Which models train on ``workers`` Ray Train workers: "auto" (the longest WSDHQ model), "all",
    # "none", or run names (wsdhq-32,wsdhq_progressive). The others run the same loop in Ray Train's
    # local mode in one process: a distributed run costs ~35 s of start-up for ~10 s of training here.
    distributed: str = "auto"
    # Lanes at a time in the train job: the local-mode models (one lane) beside the distributed
    # run(s) (head_cpus must hold the distributed lanes x workers).
    parallel: int = 2
    head_cpus: int = 4                     # logical CPUs of the local head (over-declared on purpose)
    bits: list[int] = field(default_factory=lambda: [8, 16, 24, 32])
    progressive: bool = True               # also train WSDHQ-progressive (one model, every length)
    epochs: int | None = None              # override the config's epochs (tests use a small budget)
    top_k: str = "all"                     # mAP@K for the demo's ~500-item database
    baselines: list[str] = field(default_factory=lambda: ["pq", "opq", "residual", "lsq", "random"])
    seed: int = 0
    train_overrides: list[str] = field(default_factory=list)


def _log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Pipeline:
    def __init__(self, cfg: DemoConfig, redo: set[str], address: str | None):
        self.cfg = cfg
        self.redo = redo
        self.address = address
        self.own_head = False  # set when run() starts a local head
        self.root = (REPO / cfg.out).resolve() if not os.path.isabs(cfg.out) else Path(cfg.out)
        self.data = self.root / "data"
        self.tags = self.root / "tags"
        self.runs = self.root / "runs"
        self.codes = self.root / "codes"
        self.reports = self.root / "reports"

    # ---- bookkeeping -------------------------------------------------------------------------
    def done(self, stage: str, marker: Path, output: Path | None = None) -> bool:
        """Whether ``stage`` ("train wsdhq-8" belongs to stage "train") can be skipped. A stage asked
        to run again first loses its ``output``: the jobs resume from what they find (Ray Train by
        run name, encode by code file), so stale output would otherwise be kept, not redone."""
        if stage.split()[0] in self.redo or "all" in self.redo:
            if output is not None and output.exists():
                _log(f"{stage}: removing {output} to run it again")
                shutil.rmtree(output)
            return False
        if marker.exists():
            _log(f"{stage}: already done ({marker.relative_to(self.root)}); --redo {stage.split()[0]} runs it again")
            return True
        return False

    def distributed(self) -> set[str]:
        """Run names that train on Ray Train workers (``distributed=``); the rest run in local mode."""
        names = [n for n, _ in self.models()]
        choice = self.cfg.distributed.strip()
        if choice == "all":
            return set(names)
        if choice == "none" or self.cfg.workers == 0:
            return set()
        if choice == "auto":
            wsdhq = [n for n in names if n.startswith("wsdhq-")]
            return {max(wsdhq, key=lambda n: int(n.split("-")[1]))} if wsdhq else set()
        chosen = {c.strip() for c in choice.split(",") if c.strip()}
        unknown = chosen - set(names)
        if unknown:
            raise SystemExit(f"wsdhq demo: distributed={choice}: no model {sorted(unknown)}; "
                             f"models: {', '.join(names)} (or auto, all, none)")
        return chosen

    def models(self) -> list[tuple[str, list[str]]]:
        """(run name, train overrides) of every model the demo trains."""
        out = [(f"wsdhq-{b}", ["method.name=wsdhq", f"method.quantizer.M={b // 8}"]) for b in self.cfg.bits]
        if self.cfg.progressive:
            # DPQ's feature-only stage (32 epochs by default) is cut to half of the demo's budget,
            # or the quantization loss would never switch on.
            epochs = self.cfg.epochs or self.config_epochs()
            out.append(("wsdhq_progressive", ["method.name=wsdhq_progressive",
                                              f"method.quantizer={{kind: progressive, M: {max(self.cfg.bits) // 8}, "
                                              f"feature_epochs: {epochs // 2}}}"]))
        return out

    @functools.cached_property
    def tag_dim(self) -> int:
        """The tag embeddings' dimension, which the encoder's output must match (loaded once)."""
        from trainer.tags import TagSemantics

        return TagSemantics.load(str(self.tags)).dim

    def config_epochs(self) -> int:
        from shards.config import load
        from trainer.config import RunConfig

        return load(RunConfig, REPO / self.cfg.config).training.epochs

    def job(self, name: str, lanes: list[list[list[str]]], parallel: int = 1) -> None:
        """Run lanes of commands as ONE Ray job on the head and follow its logs to the end (each lane
        one process running its commands in turn; see ``_run_lanes``)."""
        from cluster import jobs

        entry = [sys.executable, "-m", "cluster.demo", "--lanes", json.dumps(lanes), "--parallel", str(parallel)]
        t = time.perf_counter()
        logging.disable(logging.WARNING)  # the job client's packaging chatter; the job's own log is filtered
        try:
            job_id = jobs.submit(self.address, entry, working_dir=REPO,
                                 env_vars={**JOB_ENV, **(LOCAL_HEAD_ENV if self.own_head else {})})
        finally:
            logging.disable(logging.NOTSET)
        _log(f"{name}: submitted Ray job {job_id}")
        shown = LogFilter()
        logging.disable(logging.WARNING)
        try:
            state = jobs.follow(self.address, job_id, write=lambda s: sys.stdout.write(shown(s)))
        finally:
            logging.disable(logging.NOTSET)
        if state != "SUCCEEDED":
            raise SystemExit(f"demo: Ray job {job_id} ({name}) ended {state}; its logs are above "
                             f"(`wsdhq ray logs {job_id}` while the head runs)")
        _log(f"{name}: done in {time.perf_counter() - t:.0f}s")

    # ---- stages -------------------------------------------------------------------------------
    def stage_data(self) -> None:
        if self.done("data", self.data / "database" / "manifest.json", self.data):
            return
        from shards.__main__ import main as shards_main

        _log("data: building the demo shards (sklearn digits, simulated weak tags)")
        rc = shards_main(["demo", "--out", str(self.data), "--seed", str(self.cfg.seed), "--features",
                          "--overwrite"])
        if rc:
            raise SystemExit(f"demo: building the demo shards failed ({rc})")

    def stage_tags(self) -> None:
        if self.done("tags", self.tags / "semantics.json", self.tags):
            return
        self.job("tags", [[["-m", "trainer.tags", "build", "--shards", str(self.data / "train"),
                            "--out", str(self.tags), "--config", str(REPO / self.cfg.tags_config)]]])

    def stage_train(self) -> None:
        distributed = self.distributed()
        local, ddp = [], []
        for name, overrides in self.models():
            if self.done(f"train {name}", self.runs / name / "final" / "meta.json", self.runs / name):
                continue
            argv = ["-m", "trainer.train", "--config", str(REPO / self.cfg.config),
                    f"data.train={self.data / 'train'}", f"data.tags={self.tags}",
                    f"storage.path={self.runs}", f"storage.name={name}",
                    f"scaling.num_workers={self.cfg.workers if name in distributed else 0}",
                    f"training.seed={self.cfg.seed}",
                    f"method.embed_dim={self.tag_dim}",
                    *overrides, *self.cfg.train_overrides]
            if self.cfg.epochs is not None:
                argv.append(f"training.epochs={self.cfg.epochs}")
            (ddp if name in distributed else local).append(argv)
        # One lane for the local-mode models (one process, one import of torch and faiss); the
        # distributed runs spread over the remaining lanes, each lane one driver process.
        lanes = [local] if local else []
        n = max(1, self.cfg.parallel - len(lanes))
        lanes += [ddp[i::n] for i in range(min(n, len(ddp)))]
        if lanes:
            what = f"{len(ddp)} on {self.cfg.workers} Ray Train workers, {len(local)} in local mode"
            self.job(f"train {len(local) + len(ddp)} model(s) ({what})", lanes, self.cfg.parallel)

    def stage_encode(self) -> None:
        todo = []
        for name, _ in self.models():
            out = self.codes / name
            if self.done(f"encode {name}", out / "train" / "codes_manifest.json", out):
                continue
            # The dataset root: query, database and train in one process, one model load. In the job's
            # own process (--local): an actor pool's start-up would outweigh ~3,000 tiny samples.
            todo.append(["-m", "eval.encode", "--checkpoint", str(self.runs / name / "final"),
                         "--shards", str(self.data), "--out", str(out), "--local"])
        if todo:
            self.job(f"encode {len(todo)} model(s)", [todo])

    def stage_evaluate(self) -> dict:
        from eval.evaluate import main as evaluate_main

        reports = {}
        for name, _ in self.models():
            out = self.reports / name
            if not self.done(f"evaluate {name}", out / "report.json", out):
                _log(f"evaluate {name}")
                baselines = [] if name == "wsdhq_progressive" else self.cfg.baselines
                rc = evaluate_main([
                    "--query", str(self.codes / name / "query"), "--database", str(self.codes / name / "database"),
                    "--train", str(self.codes / name / "train"), "--out", str(out),
                    "--train-shards", str(self.data / "train"),
                    "--query-shards", str(self.data / "query"), "--database-shards", str(self.data / "database"),
                    f"top_k={self.cfg.top_k}", f"baselines.methods={json.dumps(baselines)}", "baselines.on=inputs", "baselines.normalize=true"])
                if rc:
                    raise SystemExit(f"demo: evaluation of {name} failed ({rc})")
            reports[name] = json.loads((out / "report.json").read_text())
        return reports

    # ---- the run ----------------------------------------------------------------------------------
    def run(self) -> Path:
        t0 = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        self.stage_data()
        head = None
        needs_ray = any(not self._finished(s) for s in ("tags", "train", "encode"))
        if needs_ray and self.address is None:
            from cluster.local import LocalHead

            _log(f"starting a local Ray head ({self.cfg.head_cpus} logical CPUs, token auth on)")
            head = LocalHead(num_cpus=self.cfg.head_cpus).__enter__()
            self.address, self.own_head = head.address, True
        stopping = None
        try:
            self.stage_tags()
            self.stage_train()
            self.stage_encode()
            if head is not None:
                # The evaluation needs no Ray: the head stops (~30 s of Ray shutting its processes
                # down gracefully) while the baselines train.
                _log("stopping the local Ray head (in the background; evaluation needs no Ray)")
                stopping = threading.Thread(target=head.__exit__, args=(None, None, None))
                stopping.start()
            reports = self.stage_evaluate()
        finally:
            if stopping is not None:
                stopping.join()
            elif head is not None:
                _log("stopping the local Ray head")
                head.__exit__(None, None, None)
        table = results_table(reports, self.cfg.bits)
        (self.root / "results.md").write_text(table + "\n")
        (self.root / "results.json").write_text(json.dumps(summary(reports), indent=2) + "\n")
        print("\n" + table + "\n")
        print(f"reports and plots: {self.reports}/<model>/ (report.md, report.json, *.png)")
        print(f"results table: {self.root / 'results.md'}   total time {time.perf_counter() - t0:.0f}s")
        return self.root

    def _finished(self, stage: str) -> bool:
        if stage in self.redo or "all" in self.redo:
            return False
        if stage == "tags":
            return (self.tags / "semantics.json").exists()
        if stage == "train":
            return all((self.runs / n / "final" / "meta.json").exists() for n, _ in self.models())
        return all((self.codes / n / "train" / "codes_manifest.json").exists() for n, _ in self.models())


# What a person reads in the demo: the stages' own lines. Ray's and faiss's chatter (timestamped
# INFO/WARNING records, Train controller and worker-group lines, checkpoint notices, faiss's SIMD
# probing) stays in the job's full log (`wsdhq ray logs <job id>`).
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RAY_RECORD = re.compile(r"^(\[?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+\]?\s+\S*\s*(INFO|WARNING|DEBUG)\b|"
                        r"\[\d{4}-\d\d-\d\d [^]]*\] \S+ \d+ \d+\])")
PREFIX = re.compile(r"^\((\w+) pid=\d+(?:, ip=[\d.]+)?\)\s*")
NOISE = ("Running entrypoint for job", "Checkpoint successfully created", "faiss", "AVX", "Reporting training result",
         "Reported metrics", "please provide at least", "repeated", "Setting up process group",
         "WebSocket closed", "core_worker.cc", "(raylet)")


class LogFilter:
    """Followed job log -> the lines worth a person's attention, each once, indented under its stage.

    Ray prints every worker line twice here (the worker's own stream and Ray Train's log capture
    both reach the driver), so a line equal to the last one kept is dropped."""

    def __init__(self):
        self.last = None

    def __call__(self, chunk: str) -> str:
        out = []
        for line in ANSI.sub("", chunk).splitlines():
            m = PREFIX.match(line)
            actor = m.group(1) if m else None
            text = line[m.end():] if m else line
            if (not text.strip() or actor == "TrainController" or RAY_RECORD.match(text)
                    or any(n in text for n in NOISE) or text == self.last):
                continue
            self.last = text
            out.append(f"    | {text}\n")
        return "".join(out)


def _headline(row: dict, convention: str) -> float:
    return float(row["metrics"]["mAP"][convention])


LABELS = {"wsdhq": "WSDHQ", "wsdhq_progressive": "WSDHQ-progressive", "pq": "faiss PQ",
          "opq": "faiss OPQ", "residual": "faiss RQ", "lsq": "faiss LSQ", "random": "random codes"}


def summary(reports: dict) -> dict:
    """{method label: {bits: mAP}} for the AQD rows of every report (headline convention)."""
    out: dict[str, dict[int, float]] = {}
    for rep in reports.values():
        conv = rep["headline_convention"]
        for row in rep["rows"]:
            if row["scoring"] == "aqd" and row["bits"] is not None:
                label = LABELS.get(row["method"], row["method"])
                out.setdefault(label, {})[int(row["bits"])] = _headline(row, conv)
    return out


def results_table(reports: dict, bits: list[int]) -> str:
    any_rep = next(iter(reports.values()))
    conv, k = any_rep["headline_convention"], any_rep["config"]["top_k"]
    rows = summary(reports)
    head = "| method | " + " | ".join(f"{b} bits" for b in bits) + " |"
    lines = [f"mAP@{k} (AQD, queries without relevant items: {conv}; ties broken by database index)",
             "", head, "|---|" + "---|" * len(bits)]
    for label, by_bits in rows.items():
        cells = [f"{by_bits[b]:.4f}" if b in by_bits else "-" for b in bits]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _run_lanes(lanes: list[list[list[str]]], parallel: int = 1) -> int:
    """Inside a job: each lane is one ``python -m cluster.demo --lane`` process that runs its
    ``["-m", module, *args]`` commands in turn, ``parallel`` lanes at a time. One lane at a time
    streams its output and stops at a failure; several print each lane's output whole when it ends
    (so a person reads one run's lines together) and return the first failure.

    Lanes that share the machine get ``OMP_NUM_THREADS`` = cores / lanes: a local-mode training
    run is one process like a Ray Train worker, and Ray gives a 1-CPU worker one thread; with the
    default threads (one per core) beside other work, torch's and faiss's OpenMP waits made one
    local-mode run of the demo ~9x slower on 2 shared cores (490 s against 55 s with one thread, load
    average 12-20)."""
    import subprocess
    import tempfile

    def argv(lane):
        return [sys.executable, "-m", "cluster.demo", "--lane", json.dumps(lane)]

    if parallel <= 1 or len(lanes) <= 1:
        for lane in lanes:
            rc = subprocess.call(argv(lane))
            if rc:
                return rc
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // min(parallel, len(lanes))))}
    running: list[tuple[subprocess.Popen, object]] = []
    failed, todo = 0, list(lanes)
    while todo or running:
        while todo and len(running) < parallel:
            log = tempfile.TemporaryFile(mode="w+")
            running.append((subprocess.Popen(argv(todo.pop(0)), stdout=log, stderr=subprocess.STDOUT, env=env), log))
        time.sleep(0.2)
        for proc, log in [r for r in running if r[0].poll() is not None]:
            running.remove((proc, log))
            log.seek(0)
            sys.stdout.write(log.read())
            sys.stdout.flush()
            log.close()
            failed = failed or proc.returncode
    return failed


def _lane(commands: list[list[str]]) -> int:
    """Run ``["-m", module, *args]`` commands one after another in THIS process, as
    ``module.main(args)`` (the same entry point ``python -m module`` calls): the lane imports
    torch, faiss and Ray once for all its commands. Stops at the first failure."""
    import importlib

    for cmd in commands:
        if cmd[:1] != ["-m"] or len(cmd) < 2:
            raise SystemExit(f"demo: a lane command is [\"-m\", module, *args], got {cmd}")
        module = importlib.import_module(cmd[1])
        if not hasattr(module, "main"):  # a package run as python -m: its __main__ holds main
            module = importlib.import_module(cmd[1] + ".__main__")
        try:
            rc = module.main(cmd[2:])
        except SystemExit as e:  # argparse errors and the commands' own exits
            rc = e.code
            if not isinstance(rc, (int, type(None))):  # SystemExit("message"): Python prints it, exit 1
                print(rc, file=sys.stderr)
                rc = 1
        sys.stdout.flush()
        if rc:
            return rc
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wsdhq demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redo", default="", help=f"comma-separated stages to run again ({', '.join(STAGES)}, all)")
    p.add_argument("--address", default=None, help="job API of a running Ray cluster (default: start a local head)")
    p.add_argument("--lanes", help=argparse.SUPPRESS)
    p.add_argument("--lane", help=argparse.SUPPRESS)
    p.add_argument("--parallel", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="DemoConfig key=value, e.g. workers=1 epochs=3 out=runs/demo2")
    args = p.parse_args(argv)
    if args.lanes:
        return _run_lanes(json.loads(args.lanes), args.parallel)
    if args.lane:
        return _lane(json.loads(args.lane))
    data: dict = {}
    try:
        for item in args.overrides:
            apply_override(data, item)
        cfg = from_dict(DemoConfig, data)
    except ConfigError as e:
        print(f"wsdhq demo: {e}", file=sys.stderr)
        return 2
    redo = {s.strip() for s in args.redo.split(",") if s.strip()}
    unknown = redo - set(STAGES) - {"all"}
    if unknown:
        print(f"wsdhq demo: unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}, all", file=sys.stderr)
        return 2
    if redo - {"all"}:  # a stage run again makes every later stage's output stale
        redo |= set(STAGES[min(STAGES.index(s) for s in redo - {"all"}):])
    # A terminated demo still runs its `finally`: the Ray head it started must not outlive it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    Pipeline(cfg, redo, args.address).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
