"""Tag normalisation: one function applied identically at counting time and at target time.

Web tags arrive as whatever users typed. Normalisation decides which raw strings are "the same tag"
before anything is counted, so it is stored in the artifact and re-applied by
``TagSemantics.targets`` (a different rule at training time would silently drop tags).
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from shards.config import at_least

# Camera/phone model tags that Flickr clients add automatically ("canon", "eos400d", "nikond80",
# "iphone4s", "dsc0042"). A project choice: the pattern below is deliberately narrow, and the rule
# is off unless `drop_camera_tags` is set.
_CAMERA = re.compile(
    r"^(canon|nikon|sony|olympus|pentax|panasonic|fujifilm|fuji|kodak|leica|samsung|iphone|"
    r"lumix|eos|dsc|img|dscn|dscf)[a-z\s_-]*\d[\w\s-]*$"
)
_NUMERIC = re.compile(r"^[\d\s.,:/_-]+$")
_SPACES = re.compile(r"\s+")


@dataclass
class NormalizeConfig:
    """How a raw tag string becomes a vocabulary key (every step is this project's choice)."""

    nfkc: bool = True                 # Unicode NFKC: full-width letters, ligatures -> plain forms
    lowercase: bool = True            # casefold-style lower-casing ("Sky" == "sky")
    strip: bool = True                # strip and collapse inner whitespace runs to one space
    max_tag_length: int = 64          # longer tags are dropped (counted as "too_long")
    drop_numeric: bool = True         # "2007", "12:30", "1/250" carry no semantics
    drop_camera_tags: bool = False    # camera-model tags ("nikond80"); off by default
    stop_tags: list[str] = field(default_factory=list)  # dropped after normalisation

    def __post_init__(self):
        at_least(self, "max_tag_length", 1)


class TagNormalizer:
    """Apply a ``NormalizeConfig``; ``skips`` counts every dropped tag by reason."""

    def __init__(self, cfg: NormalizeConfig):
        self.cfg = cfg
        self._stop = {self._canonical(t) for t in cfg.stop_tags}
        self.skips: Counter = Counter()

    def _canonical(self, tag: str) -> str:
        if self.cfg.nfkc:
            tag = unicodedata.normalize("NFKC", tag)
        if self.cfg.lowercase:
            tag = tag.lower()
        if self.cfg.strip:
            tag = _SPACES.sub(" ", tag).strip()
        return tag

    def normalize(self, tag: object) -> str | None:
        """The vocabulary key for ``tag``, or None (with the reason counted) when it is dropped."""
        if isinstance(tag, bytes):
            try:
                tag = tag.decode("utf-8")
            except UnicodeDecodeError:
                self.skips["non_utf8"] += 1
                return None
        if not isinstance(tag, str):
            self.skips["not_a_string"] += 1
            return None
        if len(tag) > 4 * self.cfg.max_tag_length:  # cheap guard before NFKC on huge strings
            self.skips["too_long"] += 1
            return None
        tag = self._canonical(tag)
        if not tag:
            self.skips["empty"] += 1
            return None
        if len(tag) > self.cfg.max_tag_length:
            self.skips["too_long"] += 1
            return None
        if self.cfg.drop_numeric and _NUMERIC.match(tag):
            self.skips["numeric"] += 1
            return None
        if self.cfg.drop_camera_tags and _CAMERA.match(tag):
            self.skips["camera"] += 1
            return None
        if tag in self._stop:
            self.skips["stop_tag"] += 1
            return None
        return tag

    def normalize_image(self, tags: object) -> list[str]:
        """The sorted set of vocabulary keys of one image (a tag counts once per image)."""
        if not isinstance(tags, (list, tuple)):
            self.skips["tags_not_a_list"] += 1
            return []
        return sorted({k for k in (self.normalize(t) for t in tags) if k is not None})
