"""The typed config machinery: every user mistake is one ConfigError naming the key."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from trainer.config import ConfigError, apply_override, from_dict, load, to_dict


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
