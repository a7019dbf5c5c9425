"""The inference model and its export: what ``eval.encode`` needs to turn images into codes.

(Resuming training is ``trainer.resume``'s job; this is the artifact a trained run hands on.)
An inference checkpoint directory (local path or s3:// prefix, through ``shards.storage``) holds
``model.pt`` (encoder state dict, ``torch.save``), ``quantizer.npz`` (``Quantizer.save``: codebooks
and everything ``encode`` depends on, the additive quantizer's metric V̄ included) and
``meta.json``: ``format``, ``version``, ``code`` (the ``CodeSpec``: kind, M, K, D, bits), ``space``,
``method`` (its name), ``image_size``, ``config`` (the run's config, its ``method`` and ``encoder``
sections as the model was built: one copy) and the run's ``epoch``, ``step`` and
``tag_semantics_hash``. Loading never unpickles: ``torch.load(weights_only=True)`` and
``np.load(allow_pickle=False)``.
"""
from __future__ import annotations

import io
import json
import pickle

import torch
from torch import nn

from shards.config import from_dict, to_dict
from trainer.losses import reading_target

FILES = ("model.pt", "quantizer.npz", "meta.json")
FORMAT, VERSION = "wsdhq-inference", 2


class InferenceModel:
    """encoder (eval mode) + quantizer: ``embed(x)`` gives the vectors the codes quantize (and the
    query side of AQD scoring), ``encode(x)`` gives uint8 codes (N, M)."""

    def __init__(self, encoder: nn.Module, quantizer, space: str, meta: dict):
        self.encoder, self.quantizer, self.space, self.meta = encoder, quantizer, space, meta

    @property
    def image_size(self) -> int | None:
        """Input size the encoder was trained at (None for feature encoders)."""
        size = self.meta.get("image_size")
        return int(size) if size else None

    @property
    def encoder_config(self) -> dict:
        """The encoder's config as built (``kind``, ``in_features``, ...)."""
        return (self.meta.get("config") or {}).get("encoder") or {}

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return reading_target(self.encoder(x), self.space)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_embeddings(self.embed(x))

    @torch.no_grad()
    def encode_embeddings(self, e: torch.Tensor) -> torch.Tensor:
        """Codes of vectors already returned by ``embed`` (saves a second forward pass); the
        quantizer's own ``encode``, whatever its kind (the same vector always gets the same code)."""
        return self.quantizer.encode(e.to(self.quantizer.codebooks.device))


def _write(dir_url: str, name: str, data: bytes) -> None:
    from shards import storage  # lazy: webdataset/boto3 only when a checkpoint is written

    storage.write_bytes(storage.join(dir_url, name), data)


def _read(dir_url: str, name: str) -> bytes:
    from shards import storage

    try:
        return storage.read_bytes(storage.join(dir_url, name))
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {dir_url}: missing {name}") from None


def save_inference(dir_url: str, method, run: dict | None = None, image_size: int | None = None) -> dict:
    """Write an inference checkpoint of ``method`` (a ``trainer.methods.Method``). ``run`` adds the
    run's ``config`` (its method and encoder sections are replaced by the built ones), ``epoch``,
    ``step`` and ``tag_semantics_hash``; ``image_size`` is the input size the encoder was trained at
    (encoders must be fed that size later). Returns the meta written."""
    run = dict(run or {})
    config = {**run.pop("config", {}), "method": to_dict(method.cfg), "encoder": to_dict(method.encoder_cfg)}
    q = method.quantizer
    full = {"format": FORMAT, "version": VERSION, "code": q.spec.to_dict(), "space": method.cfg.space,
            "method": method.cfg.name, "image_size": image_size, "config": config, **run}
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in method.encoder.state_dict().items()}, buf)
    _write(dir_url, "model.pt", buf.getvalue())
    buf = io.BytesIO()
    q.save(buf)
    _write(dir_url, "quantizer.npz", buf.getvalue())
    _write(dir_url, "meta.json", json.dumps(full, indent=1, sort_keys=True).encode())
    return full


def load_inference(dir_url: str, device: str | torch.device = "cpu") -> InferenceModel:
    """Rebuild the encoder from ``meta.json``, load its weights (weights only), eval mode."""
    from trainer.encoders import EncoderConfig, build_encoder
    from trainer.quantizers import load_quantizer

    dir_url = str(dir_url)
    try:
        meta = json.loads(_read(dir_url, "meta.json"))
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint {dir_url}: meta.json is not JSON ({e})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"checkpoint {dir_url}: meta.json is not a {FORMAT} v{VERSION} checkpoint "
                         f"(format {meta.get('format')!r}, version {meta.get('version')!r}); "
                         "re-export it with this version")
    config = meta["config"]
    enc_cfg = from_dict(EncoderConfig, dict(config["encoder"], weights=None, pretrained=False))
    encoder = build_encoder(enc_cfg, config["method"]["embed_dim"])
    try:
        state = torch.load(io.BytesIO(_read(dir_url, "model.pt")), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
        # a file that is not a plain weights-only state dict (pickled code, a truncated or foreign
        # file): one line, never torch's advice to retry with weights_only=False
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {dir_url}: model.pt is not a weights-only torch state dict, refused "
                         f"unread ({type(e).__name__}: {first[:160]})") from None
    try:
        encoder.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"checkpoint {dir_url}: model.pt does not fit the encoder in meta.json ({e})") from None
    encoder.to(device).eval()
    try:
        quantizer = load_quantizer(io.BytesIO(_read(dir_url, "quantizer.npz")))
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - np.load raises ValueError, OSError, BadZipFile, KeyError
        raise ValueError(f"checkpoint {dir_url}: quantizer.npz unreadable ({type(e).__name__})") from None
    if not getattr(quantizer, "is_trained", True):
        raise ValueError(f"checkpoint {dir_url}: its codebooks were never fitted (a run saved before its "
                         "first codebook update); retrain it with this version, which always ends with one")
    if quantizer.spec.to_dict() != meta["code"]:
        raise ValueError(f"checkpoint {dir_url}: quantizer.npz holds {quantizer.spec.to_dict()} but "
                         f"meta.json says {meta['code']}")
    quantizer.to(device)
    if isinstance(quantizer, nn.Module):
        quantizer.eval()
    return InferenceModel(encoder, quantizer, meta["space"], meta)
