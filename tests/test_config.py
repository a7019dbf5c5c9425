"""The typed config machinery: every user mistake is one ConfigError naming the key."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from shards.config import ConfigError, apply_override, from_dict, load, to_dict


@dataclass
class Inner:
    lr: float = 3e-4
    steps: int = 10
    kind: Literal["ddp", "deepspeed"] = "ddp"


@dataclass
class Outer:
    name: str = "run"
    inner: Inner = field(default_factory=Inner)
    bits: list[int] = field(default_factory=lambda: [8, 16])
    path: Optional[str] = None


def test_defaults_and_nested_values_are_built():
    cfg = from_dict(Outer, {"inner": {"lr": 1, "steps": 5}, "bits": [32]})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.steps == 5 and cfg.bits == [32] and cfg.name == "run" and cfg.path is None


def test_unknown_key_names_its_full_path():
    with pytest.raises(ConfigError, match=r"unknown config key 'stpes' under 'inner'"):
        from_dict(Outer, {"inner": {"stpes": 5}})


@pytest.mark.parametrize("data, message", [
    ({"inner": {"steps": 2.5}}, r"inner\.steps: expected an integer, got 2\.5"),
    ({"inner": {"steps": True}}, r"inner\.steps: expected an integer"),
    ({"inner": {"kind": "fsdp"}}, r"inner\.kind: 'fsdp' is not one of 'ddp', 'deepspeed'"),
    ({"bits": [8, "x"]}, r"bits\[1\]: expected an integer"),
    ({"name": 3}, r"name: expected a string"),
    ({"inner": 7}, r"inner: expected a mapping"),
])
def test_wrong_types_are_refused_with_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_yaml_file_plus_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: demo\ninner:\n  lr: 0.01\n")
    cfg = load(Outer, p, ["inner.steps=7", "bits=[8,16,24]", "path=s3://b/x"])
    assert (cfg.name, cfg.inner.lr, cfg.inner.steps, cfg.bits, cfg.path) == ("demo", 0.01, 7, [8, 16, 24], "s3://b/x")
    assert to_dict(cfg) == {"name": "demo", "inner": {"lr": 0.01, "steps": 7, "kind": "ddp"},
                            "bits": [8, 16, 24], "path": "s3://b/x"}


def test_bad_override_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not of the form"):
        apply_override({}, "inner.steps")
    with pytest.raises(ConfigError, match="config file not found"):
        load(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(Outer, bad)


# ---- range checks: each config's __post_init__, re-rooted at the section's dotted path -------------

@dataclass
class Ranged:
    steps: int = 10

    def __post_init__(self):
        from shards.config import at_least

        at_least(self, "steps", 1)


@dataclass
class Holder:
    inner: Ranged = field(default_factory=Ranged)
    extra: list[Ranged] = field(default_factory=list)


def test_a_range_check_names_the_field_alone_and_the_full_dotted_key_when_loaded():
    with pytest.raises(ConfigError, match=r"^steps: must be >= 1, got 0$"):
        Ranged(steps=0)
    with pytest.raises(ConfigError, match=r"^inner\.steps: must be >= 1, got 0$"):
        from_dict(Holder, {"inner": {"steps": 0}})
    with pytest.raises(ConfigError, match=r"^extra\[1\]\.steps: must be >= 1, got -2$"):
        from_dict(Holder, {"extra": [{"steps": 3}, {"steps": -2}]})


RUN_RANGES = [
    (["reader.batch_size=0"], "reader.batch_size: must be >= 1, got 0"),
    (["reader.num_workers=-1"], "reader.num_workers: must be >= 0, got -1"),
    (["reader.crop_scale=[0.5, 0.2]"],
     "reader.crop_scale: must be (low, high) with 0 < low <= high <= 1, got (0.5, 0.2)"),
    (["method.quantizer.K=0"], "method.quantizer.K: must be in [1, 256], got 0"),
    (["method.quantizer.K=300"], "method.quantizer.K: must be in [1, 256], got 300"),
    (["method.embed_dim=8", "method.quantizer.M=9"],
     "method.quantizer.M: must be <= method.embed_dim (8) for the additive quantizer, got 9"),
    (["method.quantizer.update_every=0"], "method.quantizer.update_every: must be >= 1, got 0"),
    (["method.quantizer.iters=0"], "method.quantizer.iters: must be >= 1, got 0"),
    (["method.quantizer.icm_restarts=0"], "method.quantizer.icm_restarts: must be >= 1, got 0"),
    (["method.quantizer.kmeans_sample=100"],
     "method.quantizer.kmeans_sample: must be >= K (256): k-means needs K rows, got 100"),
    (["method.quantizer.icm_sweeps=0"], "method.quantizer.icm_sweeps: must be >= 1, got 0"),
    (["method.quantizer.lambda_q=-0.1"], "method.quantizer.lambda_q: must be >= 0, got -0.1"),
    (["method.name=dpq", "method.quantizer.softmax_gamma=0"],
     "method.quantizer.softmax_gamma: must be > 0, got 0.0"),
    # the quantizer section is a tagged union: kind picks the member (the preset's when absent)
    (["method.quantizer.kind=bogus"], "method.quantizer.kind: 'bogus' is not one of 'additive', 'progressive', 'product'"),
    (["method.name=dpq", "method.quantizer.update_every=2"],
     "unknown config key 'update_every' under 'method.quantizer'; known: K, M, end_to_end, feature_epochs, init, "
     "kind, kmeans_sample, mu, nu, softmax_gamma, tau, top_k"),
    (["method.name=bogus"], "method.name: 'bogus' is not one of 'wsdhq', 'wsdhq_progressive', 'dpq', 'mecoq', 'mopq'"),
    (["training.epochs=0"], "training.epochs: must be >= 1, got 0"),
    (["training.optim.lr=-1"], "training.optim.lr: must be >= 0, got -1.0"),
    (["training.optim.momentum=1"], "training.optim.momentum: must be in [0, 1), got 1.0"),
    (["training.optim.decay=0"], "training.optim.decay: must be in (0, 1], got 0.0"),
    (["encoder.kind=mlp"], "encoder.in_features: must be set (the length of feat.npy) for encoder.kind 'mlp', got 0"),
    (["encoder.kind=timm"], "encoder.name: must be set (the model's name) for encoder.kind 'timm'"),
    (["encoder.dropout=1"], "encoder.dropout: must be in [0, 1), got 1.0"),
    (["encoder.num_classes=3"], "encoder.num_classes: only method 'dpq' has a classification head; got 3 with "
     "method.name='wsdhq' (set it to 0)"),
    (["scaling.num_workers=-1"], "scaling.num_workers: must be >= 0, got -1"),
    (["scaling.cpus_per_worker=0"], "scaling.cpus_per_worker: must be > 0, got 0.0"),
    (["scaling.collective_timeout_s=0"], "scaling.collective_timeout_s: must be >= 1, got 0"),
    (["storage.checkpoint_every=0"], "storage.checkpoint_every: must be >= 1, got 0"),
    (["storage.keep_checkpoints=0"], "storage.keep_checkpoints: must be >= 1, got 0"),
    (["storage.name=a/b"], "storage.name: must be a non-empty name without '/', got 'a/b'"),
    (["failure.max_failures=-2"], "failure.max_failures: must be >= -1, got -2"),
    (["scaling.num_workers=0", "debug.fail_at_epoch=0"],
     "debug.fail_rank: must be a rank below 1 (scaling.num_workers=0), got 1"),
]


@pytest.mark.parametrize("overrides, message", RUN_RANGES)
def test_every_range_of_the_run_config_is_refused_when_it_loads_naming_the_dotted_key(overrides, message):
    from trainer.config import RunConfig

    with pytest.raises(ConfigError) as e:
        load(RunConfig, None, overrides)
    assert str(e.value) == message


def test_the_edges_of_the_run_config_ranges_are_accepted():
    from trainer.config import RunConfig

    cfg = load(RunConfig, None, ["reader.batch_size=1", "method.quantizer.K=256", "method.embed_dim=4",
                                 "method.quantizer.M=4", "method.quantizer.iters=2",
                                 "method.quantizer.dead_codewords=reseed", "training.optim.lr=0",
                                 "failure.max_failures=-1", "method.quantizer.kmeans_sample=256"])
    q = cfg.method.quantizer
    assert (cfg.reader.batch_size, q.kind, q.K, q.M, q.iters) == (1, "additive", 256, 4, 2)
    dpq = load(RunConfig, None, ["method.name=dpq", "encoder.num_classes=3", "method.embed_dim=2",
                                 "method.quantizer.M=4", "method.quantizer.kmeans_sample=256"])
    # the progressive quantizer has no block split: more levels than dimensions is allowed
    assert (dpq.encoder.num_classes, dpq.method.quantizer.kind, dpq.method.quantizer.M) == (3, "progressive", 4)


def test_a_preset_brings_its_defaults_and_composes_with_either_quantizer():
    from trainer.config import RunConfig

    def method(*overrides):
        return load(RunConfig, None, list(overrides)).method

    wsdhq, dpq, wp = method(), method("method.name=dpq"), method("method.name=wsdhq_progressive")
    assert (wsdhq.space, wsdhq.loss.mask, wsdhq.quantizer.kind) == ("sphere", "pos_neg", "additive")
    assert (dpq.space, dpq.loss.mask, dpq.quantizer.kind, dpq.quantizer.init) == ("raw", "all", "progressive",
                                                                                  "random")
    assert (wp.space, wp.quantizer.kind, wp.quantizer.init) == ("sphere", "progressive", "kmeans")
    # a preset with the other quantizer: WSDHQ's weak-tag loss on progressive codes, DPQ's on additive
    mixed = method("method.quantizer={kind: progressive, M: 2}")
    assert (mixed.name, mixed.quantizer.kind, mixed.quantizer.M, mixed.quantizer.init) == (
        "wsdhq", "progressive", 2, "kmeans")
    assert method("method.name=dpq", "method.quantizer.kind=additive").quantizer.update_every == 2
    # what the user set wins over the preset
    assert method("method.name=dpq", "method.loss.mask=pos_neg").loss.mask == "pos_neg"


@pytest.mark.parametrize("component, overrides, message", [
    ("encode", ["batch_size=0"], "batch_size: must be >= 1, got 0"),
    ("encode", ["workers=-1"], "workers: must be >= 0, got -1"),
    ("encode", ["cpus_per_actor=0"], "cpus_per_actor: must be > 0, got 0.0"),
    ("evaluate", ["top_k=0"], "top_k: expected a positive integer or 'all', got 0"),
    ("evaluate", ["top_k=most"], "top_k: expected a positive integer or 'all', got 'most'"),
    ("evaluate", ["scorings=[aqd, xyz]"], "scorings: unknown 'xyz'; known: aqd, sqd, feature"),
    ("evaluate", ["headline_convention=half"], "headline_convention: unknown 'half'; known: skip, zero"),
    ("evaluate", ["search_backend=gpu"], "search_backend: unknown 'gpu'; known: auto, faiss, torch"),
    ("evaluate", ["precision_at=[10, 0]"], "precision_at: every cut-off must be >= 1, got [10, 0]"),
    ("evaluate", ["baselines.methods=[pq, sq]"],
     "baselines.methods: unknown 'sq'; known: pq, opq, residual, lsq, random"),
    ("evaluate", ["baselines.max_train=0"], "baselines.max_train: must be >= 1, got 0"),
    ("tags", ["vocab.min_count=0"], "vocab.min_count: must be >= 1, got 0"),
    ("tags", ["vocab.max_vocab=0"], "vocab.max_vocab: must be >= 1, got 0"),
    ("tags", ["graph.eps=0"], "graph.eps: must be a cosine distance in (0, 2], got 0.0"),
    ("tags", ["graph.mix=1.5"], "graph.mix: must be in [0, 1], got 1.5"),
    ("tags", ["vectors.min_coverage=2"], "vectors.min_coverage: must be in [0, 1], got 2.0"),
    ("tags", ["normalize.max_tag_length=0"], "normalize.max_tag_length: must be >= 1, got 0"),
    ("tags", ["num_tasks=-1"], "num_tasks: must be >= 0, got -1"),
])
def test_the_encode_evaluate_and_tags_configs_check_their_ranges_when_they_load(component, overrides, message):
    from eval.encode import EncodeConfig
    from eval.evaluate import EvaluateConfig
    from trainer.tags import TagConfig

    cls = {"encode": EncodeConfig, "evaluate": EvaluateConfig, "tags": TagConfig}[component]
    with pytest.raises(ConfigError) as e:
        load(cls, None, overrides)
    assert str(e.value) == message
    load(cls)  # the defaults pass their own checks


@pytest.mark.parametrize("module, argv, line", [
    ("eval.encode", ["--checkpoint", "c", "--shards", "s", "--out", "o", "batch_size=0"],
     "encode: error: batch_size: must be >= 1, got 0"),
    ("eval.evaluate", ["--query", "q", "--database", "d", "--out", "o", "top_k=0"],
     "evaluate: error: top_k: expected a positive integer or 'all', got 0"),
    ("trainer.tags.__main__", ["build", "--shards", "s", "--out", "o", "graph.eps=0"],
     "error: graph.eps: must be a cosine distance in (0, 2], got 0.0"),
])
def test_the_clis_print_the_range_error_as_one_line_and_exit_2_before_reading_anything(module, argv, line,
                                                                                       capsys):
    import importlib

    assert importlib.import_module(module).main(argv) == 2
    assert capsys.readouterr().err == line + "\n"
