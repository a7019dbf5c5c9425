"""The human-readable side of a tag-semantics artifact: report.md, tag_frequency.png, label agreement."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from trainer.tags.artifact import TagSemantics

_PER_TAG = 2000     # images per tag used in a pair comparison (first in the hash-ordered sample)
_PAIRS_PER_GROUP = 45
_RANDOM_PAIRS = 500


def label_agreement(sample: list, vocab: list[str], sem: "TagSemantics", seed: int = 0) -> dict:
    """How often images of two tags merged into one unit share a ground-truth label, vs random pairs.

    For a tag pair (a, b): over pairs of distinct images (one tagged a, one tagged b), the fraction
    sharing >= 1 label. Averaged over member pairs of every merged group (a group's 10 most frequent
    members), and over ``_RANDOM_PAIRS`` random pairs of kept tags as the baseline.
    """
    rows = [(ids, labels) for ids, labels in sample if labels is not None]
    names = sorted({lab for _, labels in rows for lab in labels})
    col = {n: k for k, n in enumerate(names)}
    L = np.zeros((len(rows), max(len(names), 1)), dtype=np.float32)
    images_of: dict[int, list[int]] = {}
    for i, (ids, labels) in enumerate(rows):
        L[i, [col[x] for x in labels]] = 1
        for t in ids:
            images_of.setdefault(t, []).append(i)
    has_label = L.any(axis=1)
    index = {t: i for i, t in enumerate(vocab)}

    def share(a: int, b: int) -> float | None:
        ia = np.asarray(images_of.get(a, [])[:_PER_TAG])
        ib = np.asarray(images_of.get(b, [])[:_PER_TAG])
        if len(ia) == 0 or len(ib) == 0:
            return None
        common = np.intersect1d(ia, ib)
        total = len(ia) * len(ib) - len(common)
        if total <= 0:
            return None
        shared = int(((L[ia] @ L[ib].T) > 0).sum()) - int(has_label[common].sum())
        return shared / total

    merged, per_group = [], []
    for members in sem.groups():
        if len(members) < 2:
            continue
        ids = [index[t] for t in members[:10]]
        scores = [s for k, a in enumerate(ids) for b in ids[k + 1:] if (s := share(a, b)) is not None]
        merged.extend(scores[:_PAIRS_PER_GROUP])
        if scores:
            per_group.append([members[0], len(members), float(np.mean(scores))])
    kept = [index[t] for t in vocab if sem.merge_map[t] >= 0 and index[t] in images_of]
    rng = np.random.default_rng(seed)
    baseline = []
    if len(kept) >= 2:
        for _ in range(_RANDOM_PAIRS):
            a, b = rng.choice(len(kept), size=2, replace=False)
            if (s := share(kept[a], kept[b])) is not None:
                baseline.append(s)
    return {"images": len(rows), "labels": len(names),
            "merged_pairs": len(merged), "merged_share_label": _mean(merged),
            "random_pairs": len(baseline), "random_share_label": _mean(baseline),
            "groups": sorted(per_group, key=lambda g: -g[1])[:15]}


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def render_report(sem: "TagSemantics") -> tuple[str, bytes]:
    """report.md text and tag_frequency.png bytes for an artifact."""
    st = sem.stats
    sizes = st.get("sizes", {})
    lines = ["# Tag semantics report", "", f"content hash `{sem.hash}`", "",
             "## Sizes at each step", "", "| step | tags |", "|---|---|"]
    for k, label in [("raw_tags", "raw distinct tags after normalisation"),
                     ("vocab_tags", "vocabulary (min_count, max_vocab)"),
                     ("with_vectors", "with an embedding (after the OOV policy)"),
                     ("units", "merged units T"), ("merged_groups", "units with >= 2 member tags")]:
        lines.append(f"| {label} | {sizes.get(k, '?')} |")
    untagged = st.get("images_untagged_after_merge", {})
    lines += ["", "## Images", "",
              f"- images: {st.get('images')}",
              f"- with no tag after normalisation: {st.get('images_untagged_after_normalisation')}",
              f"- with no vocabulary tag: {st.get('images_untagged_after_vocab')}",
              f"- with no merged unit (all-zero target, ignored by the embedding loss): "
              f"{untagged.get('count')}{'' if untagged.get('exact', True) else ' (estimated from the sample)'}",
              f"- skipped: {st.get('skips') or 'none'}"]
    for ex in st.get("skip_examples", [])[:10]:
        lines.append(f"  - {ex}")
    vec = st.get("vectors", {})
    lines += ["", "## Embeddings", "", f"- source: {vec.get('source')} (dim {vec.get('dim')})",
              f"- per tag: {vec.get('origin')}"]
    if vec.get("note"):
        lines.append(f"- note: {vec['note']}")
    lines.append(f"- DBSCAN eps used: {st.get('eps_used')}; config: `{sem.config.get('graph')}`")
    count_of = dict(zip(sem.vocab, sem.counts))
    groups = sorted(((m, sum(count_of[t] for t in m)) for m in sem.groups() if len(m) > 1),
                    key=lambda g: (-len(g[0]), -g[1]))[:15]
    lines += ["", "## Largest merged groups", "", "| unit | members | images (sum) | member tags (count) |",
              "|---|---|---|---|"]
    for members, total in groups:
        shown = ", ".join(f"{t} ({count_of[t]})" for t in members[:12]) + (" ..." if len(members) > 12 else "")
        lines.append(f"| {members[0]} | {len(members)} | {total} | {shown} |")
    if not groups:
        lines.append("| (no tags merged) | | | |")
    la = st.get("label_agreement")
    if la:
        lines += ["", "## Agreement with ground-truth labels", "",
                  f"Over {la['images']} labelled images ({la['labels']} labels): pairs of images, one "
                  "carrying tag a and one carrying tag b, that share >= 1 label.", "",
                  f"- tags merged into one unit: {_pct(la['merged_share_label'])} over {la['merged_pairs']} tag pairs",
                  f"- random tag pairs (baseline): {_pct(la['random_share_label'])} over {la['random_pairs']} tag pairs"]
    lines += ["", "![tag frequency](tag_frequency.png)", ""]
    return "\n".join(lines), _frequency_png(sem)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _frequency_png(sem: "TagSemantics") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = sem.stats.get("raw_count_histogram", [])
    raw = np.repeat([c for c, _ in hist], [n for _, n in hist])[::-1] if hist else np.zeros(0)
    kept = np.array(sorted((c for t, c in zip(sem.vocab, sem.counts) if sem.merge_map[t] >= 0), reverse=True))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if len(raw):
        ax.loglog(np.arange(1, len(raw) + 1), raw, label=f"raw tags ({len(raw)})")
    if len(kept):
        ax.loglog(np.arange(1, len(kept) + 1), kept, linestyle="--", label=f"kept tags ({len(kept)})")
    min_count = sem.config.get("vocab", {}).get("min_count")
    if min_count:
        ax.axhline(min_count, color="grey", linestyle=":", label=f"min_count={min_count}")
    ax.set_xlabel("tag rank")
    ax.set_ylabel("images with the tag")
    ax.set_title(f"Tag frequency (T={sem.T} merged units)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
