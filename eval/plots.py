"""PNG figures of a report: PR curves, mAP vs bits, and a top-10 retrieval grid (matplotlib Agg)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _label(row: dict) -> str:
    bits = "float" if row["bits"] is None else f"{row['bits']}b"
    return f"{row['method']} {row['scoring']} {bits}"


def pr_curves(rows: list[dict], path: str, title: str) -> None:
    """Precision vs recall over rank cut-offs, one line per row (method x scoring at its top bits)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for row in rows:
        pr = row["metrics"]["pr_curve"]
        ax.plot(pr["recall"], pr["precision"], marker=".", markersize=3, label=_label(row))
    ax.set_xlabel("recall (over the whole database)")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def map_vs_bits(rows: list[dict], path: str, convention: str, k_label: str) -> None:
    """mAP@K against code length, one line per (method, scoring)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row["bits"] is None:
            continue
        series.setdefault(f"{row['method']} {row['scoring']}", []).append(
            (row["bits"], row["metrics"]["mAP"][convention]))
    for name, pts in sorted(series.items()):
        pts.sort()
        ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", label=name)
    feature_rows = [r for r in rows if r["bits"] is None]
    for r in feature_rows:
        ax.axhline(r["metrics"]["mAP"][convention], ls="--", color="gray", label=f"{r['method']} float features")
    ax.set_xlabel("bits per item")
    ax.set_ylabel(f"mAP@{k_label} ({convention})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def retrieval_grid(query_images: list[np.ndarray], results: list[list[np.ndarray]],
                   relevant: list[list[bool]], titles: list[str], path: str) -> None:
    """One row per query: the query image, then its top results framed green (relevant), red (not)
    or grey (``None``: unknown, e.g. a tag query)."""
    rows, cols = len(query_images), 1 + max((len(r) for r in results), default=0)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.imshow(query_images[r])
                key, _, labels = titles[r].partition(": ")
                ax.set_title(key.rsplit("/", 1)[-1], fontsize=6)
                ax.set_xlabel("\n".join(labels[i:i + 18] for i in range(0, min(len(labels), 54), 18)), fontsize=5)
                for s in ax.spines.values():
                    s.set_edgecolor("blue")
                    s.set_linewidth(2)
            elif c - 1 < len(results[r]):
                ax.imshow(results[r][c - 1])
                for s in ax.spines.values():
                    rel = relevant[r][c - 1]  # None: no ground truth for this query (grey)
                    s.set_edgecolor("grey" if rel is None else "green" if rel else "red")
                    s.set_linewidth(2)
            else:
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
