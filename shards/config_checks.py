"""The config error and the range checks that config dataclasses run in ``__post_init__``.

Why here: ``shards`` is the bottom layer (it imports neither ``trainer`` nor ``eval``), and its
``ReaderConfig`` checks its ranges like every other component's config, so the error lives where
all of them can raise it. ``trainer.config`` re-exports it; its loader prefixes the section's
dotted path, so ``reader.batch_size=0`` is refused as ``reader.batch_size: must be >= 1, got 0``
while the config is loaded on the driver, before any worker starts.
"""
from __future__ import annotations

from typing import Any, Iterable


class ConfigError(ValueError):
    """A configuration a user wrote is wrong; the message names the key.

    ``key`` is set when a config's own check raised it (the field name, relative to that config);
    ``under`` re-roots it at the section the loader was building.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.detail = key, message

    def under(self, section: str) -> "ConfigError":
        if not (self.key and section):
            return self
        return ConfigError(self.detail, f"{section}.{self.key}")


def require(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError(message, key)`` unless ``ok``."""
    if not ok:
        raise ConfigError(message, key)


def at_least(cfg: Any, key: str, low: float, optional: bool = False) -> None:
    """``cfg.<key> >= low`` (``None`` passes when ``optional``)."""
    value = getattr(cfg, key)
    if optional and value is None:
        return
    require(value >= low, key, f"must be >= {low}, got {value!r}")


def above(cfg: Any, key: str, low: float) -> None:
    """``cfg.<key> > low``."""
    value = getattr(cfg, key)
    require(value > low, key, f"must be > {low}, got {value!r}")


def within(cfg: Any, key: str, low: float, high: float, high_open: bool = False) -> None:
    """``low <= cfg.<key> <= high`` (``< high`` when ``high_open``)."""
    value = getattr(cfg, key)
    ok = low <= value and (value < high if high_open else value <= high)
    require(ok, key, f"must be in [{low}, {high}{')' if high_open else ']'}, got {value!r}")


def one_of(cfg: Any, key: str, known: Iterable[str], many: bool = False) -> None:
    """``cfg.<key>`` (or, with ``many``, each item of it) is one of ``known``."""
    value, known = getattr(cfg, key), list(known)
    bad = [v for v in value if v not in known] if many else ([] if value in known else [value])
    require(not bad, key, f"unknown {', '.join(map(repr, bad))}; known: {', '.join(known)}")
