"""How `wsdhq demo` lays its training out: which models run on Ray Train workers, which in local
mode, and the lane runner that runs a job's commands in one process."""
from __future__ import annotations

import pytest

from cluster.demo import DemoConfig, Pipeline, _lane


class Recorded(Pipeline):
    """The real pipeline with the job submission recorded instead of sent to a Ray head."""

    def __init__(self, cfg: DemoConfig, root):
        super().__init__(cfg, redo=set(), address="http://unused")
        self.root = root
        self.runs = root / "runs"
        self.data, self.tags = root / "data", root / "tags"
        self.__dict__["tag_dim"] = 47  # what the artifact would say; no artifact is read
        self.jobs = []

    def job(self, name, lanes, parallel=1):
        self.jobs.append((name, lanes, parallel))


def _lanes_of(cfg: DemoConfig, tmp_path) -> list[list[tuple[str, str]]]:
    p = Recorded(cfg, tmp_path)
    p.stage_train()
    [(_, lanes, _)] = p.jobs
    out = []
    for lane in lanes:
        rows = []
        for cmd in lane:
            assert cmd[:2] == ["-m", "trainer.train"]
            opts = dict(a.split("=", 1) for a in cmd[4:] if "=" in a)
            rows.append((opts["storage.name"], opts["scaling.num_workers"]))
        out.append(rows)
    return out


def test_the_longest_wsdhq_model_trains_on_workers_and_the_rest_in_one_local_mode_lane(tmp_path):
    assert _lanes_of(DemoConfig(), tmp_path) == [
        [("wsdhq-8", "0"), ("wsdhq-16", "0"), ("wsdhq-24", "0"), ("wsdhq_progressive", "0")],
        [("wsdhq-32", "2")],
    ]


def test_distributed_all_spreads_the_worker_runs_over_the_lanes_as_before(tmp_path):
    assert _lanes_of(DemoConfig(distributed="all", workers=3), tmp_path) == [
        [("wsdhq-8", "3"), ("wsdhq-24", "3"), ("wsdhq_progressive", "3")],
        [("wsdhq-16", "3"), ("wsdhq-32", "3")],
    ]


def test_named_models_and_workers_0(tmp_path):
    cfg = DemoConfig(bits=[8, 16], distributed="wsdhq_progressive,wsdhq-8")
    assert _lanes_of(cfg, tmp_path) == [[("wsdhq-16", "0")], [("wsdhq-8", "2"), ("wsdhq_progressive", "2")]]
    assert _lanes_of(DemoConfig(bits=[16], workers=0), tmp_path / "w0") == [
        [("wsdhq-16", "0"), ("wsdhq_progressive", "0")]]


def test_an_unknown_model_name_is_refused_with_the_choices(tmp_path):
    with pytest.raises(SystemExit, match=r"distributed=wsdhq-64: no model \['wsdhq-64'\]; models: wsdhq-8, "
                                         r"wsdhq-16, wsdhq-24, wsdhq-32, wsdhq_progressive \(or auto, all, none\)"):
        _lanes_of(DemoConfig(distributed="wsdhq-64"), tmp_path)


def test_a_lane_runs_its_commands_in_this_process_and_stops_at_the_first_failure(tmp_path, capsys):
    out = tmp_path / "shards"
    # a package run as `python -m`: its __main__ holds main; --help exits 0 through argparse
    assert _lane([["-m", "trainer.tags", "--help"]]) == 0
    assert "usage:" in capsys.readouterr().out
    # the driver's own error exit (2: missing config), and the next command never runs
    rc = _lane([["-m", "trainer.train", "--config", str(tmp_path / "missing.yaml")],
                ["-m", "shards", "demo", "--out", str(out)]])
    assert rc == 2 and not out.exists()
    assert "wsdhq train:" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="a lane command is"):
        _lane([["trainer.train"]])
