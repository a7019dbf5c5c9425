"""Progress a person can follow: one line per epoch from rank 0, and training curves at the end.

The per-epoch record (a flat dict) is what the loop attaches to every checkpoint as metrics.json;
the curves are drawn from that same history, so a resumed run's plot covers all its epochs.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


@dataclass
class EpochClock:
    """Splits an epoch's training pass into waiting for data and everything else. ``stop`` ends
    the pass: the loop reports after the codebook update, which has its own clock."""

    start: float = field(default_factory=time.perf_counter)
    data_wait: float = 0.0
    samples: int = 0
    _mark: float = 0.0
    end: float | None = None  # set by ``stop``: the codebook update after the pass is not the epoch's
    skips: dict[str, int] = field(default_factory=dict)  # bad samples the pass skipped, by reason (the loader's)

    def before_fetch(self) -> None:
        self._mark = time.perf_counter()

    def after_fetch(self, batch_size: int) -> None:
        self.data_wait += time.perf_counter() - self._mark
        self.samples += batch_size

    def stop(self) -> None:
        self.end = time.perf_counter()

    def summary(self) -> dict[str, float]:
        seconds = max((self.end or time.perf_counter()) - self.start, 1e-9)
        return {"epoch_seconds": seconds, "samples_per_s": self.samples / seconds,
                "data_wait_fraction": self.data_wait / seconds}


def format_line(m: dict) -> str:
    """``epoch 3/10 step 120 loss 0.41 (semantic 0.40 quant 0.01) qerr 0.02 live 256,250 ...``; bad
    samples the pass skipped, when there were any: ``skipped 3 (missing_feat 2, undecodable_image 1)``."""
    terms = " ".join(f"{k[len('loss/'):]} {m[k]:.4g}" for k in sorted(m) if k.startswith("loss/"))
    parts = [f"epoch {m['epoch'] + 1}/{m['epochs']}", f"step {m['step']}", f"loss {m['loss']:.4g}"]
    if terms:
        parts[-1] += f" ({terms})"
    if m.get("quantization_error") is not None:
        parts.append(f"qerr {m['quantization_error']:.4g}")
    if m.get("live_codewords"):
        parts.append("live " + ",".join(str(v) for v in m["live_codewords"]))
    parts.append(f"{m['samples_per_s']:.0f} samples/s")
    if m.get("skipped"):
        parts.append(f"skipped {m['skipped']} (" + ", ".join(f"{k} {v}" for k, v in m["skips"].items()) + ")")
    parts.append(f"data-wait {100 * m['data_wait_fraction']:.0f}%")
    if m.get("codebook_update_seconds"):
        parts.append(f"codebook update {m['codebook_update_seconds']:.2f}s")
    return " ".join(parts)


def plot_curves(history: list[dict]) -> bytes:
    """PNG bytes: loss terms, quantization error, live codewords and throughput against epoch."""
    epochs = [m["epoch"] + 1 for m in history]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0][0]
    ax.plot(epochs, [m["loss"] for m in history], marker="o", label="total")
    for key in sorted({k for m in history for k in m if k.startswith("loss/")}):
        ax.plot(epochs, [m.get(key, float("nan")) for m in history], marker=".", label=key[5:])
    ax.set_title("training loss")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ax.plot(epochs, [m.get("quantization_error") or float("nan") for m in history], marker="o")
    ax.set_title("quantization error (mean squared)")
    ax = axes[1][0]
    n_books = max((len(m.get("live_codewords") or []) for m in history), default=0)
    for b in range(n_books):
        ax.plot(epochs, [(m.get("live_codewords") or [float("nan")] * n_books)[b] for m in history],
                marker="o", label=f"codebook {b}")
    ax.set_title("live codewords per codebook")
    if n_books:
        ax.legend(fontsize=8)
    ax = axes[1][1]
    ax.plot(epochs, [m["samples_per_s"] for m in history], marker="o", label="samples/s (all ranks)")
    ax.set_title("throughput")
    ax2 = ax.twinx()
    ax2.plot(epochs, [m["data_wait_fraction"] for m in history], color="tab:red", marker=".",
             label="data-wait fraction")
    ax2.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    for a in axes.flat:
        a.set_xlabel("epoch")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
