"""A method's config: a preset name, the loss, and the quantizer (a tagged union on ``kind``).

``method.name`` picks a row of ``METHODS`` (what the method is supervised by, whether it has a
classification head, and the defaults it brings); ``method.loss`` configures the loss and
``method.quantizer`` the code (``kind: additive``, ``progressive`` or ``product``, each with its own
settings and training schedule). Any preset composes with either quantizer: ``wsdhq`` with
``quantizer.kind=progressive`` is the weak-tag progressive variant, ``wsdhq_progressive`` names it.
Settings a preset decides (``space``, ``loss.mask``, ``quantizer.init``) are ``"auto"`` until
``MethodConfig`` resolves them, so a saved config holds the values the run used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from shards.config import ConfigError, at_least, require, within


@dataclass(frozen=True)
class MethodSpec:
    """One method: what supervises it and the defaults it brings."""

    supervision: Literal["tags", "labels"]  # merged weak tags (TagSemantics) or manifest labels
    classifier: bool                        # DPQ's classification head and loss on the labels
    quantizer: Literal["additive", "progressive", "product"]
    space: Literal["sphere", "raw"]         # where codes live: z = f/‖f‖ (paper) or raw tanh f
    margin_mask: Literal["pos_neg", "all"]  # which tag pairs the margin loss ranks
    progressive_init: Literal["kmeans", "random"]
    loss: Literal["margin", "mecoq", "mopq"] = "margin"  # the objective's kind (a loss section without kind)


METHODS: dict[str, MethodSpec] = {
    # WSDHQ (AAAI 2021): weak tags, margin loss on the sphere, additive codes by alternation.
    "wsdhq": MethodSpec("tags", False, "additive", "sphere", "pos_neg", "kmeans"),
    # WSDHQ's loss with DPQ's progressive codebooks: one model serves every code length.
    "wsdhq_progressive": MethodSpec("tags", False, "progressive", "sphere", "pos_neg", "kmeans"),
    # DPQ (IJCAI 2019): labels, margin + classification loss, raw f, progressive codebooks from N(0, 0.01²).
    "dpq": MethodSpec("labels", True, "progressive", "raw", "all", "random"),
    # MeCoQ (AAAI 2022): no tags at all; two views, debiased contrastive loss on soft-quantized
    # views with a code memory; gradient-trained product codebooks of unit codewords.
    "mecoq": MethodSpec("tags", False, "product", "sphere", "pos_neg", "kmeans", "mecoq"),
    # MoPQ (EMNLP 2021): the Multinoulli contrastive loss on straight-through hard reconstructions,
    # negatives gathered across workers; keys from the merged weak tags or a second view.
    "mopq": MethodSpec("tags", False, "product", "sphere", "pos_neg", "kmeans", "mopq"),
}


@dataclass
class MarginLossConfig:
    """The adaptive cosine-margin loss m_jk = 2^(1-γ)(1 - cos(v_j, v_k))^γ (+ DPQ's classification)."""

    kind: Literal["margin"] = "margin"  # the objective (trainer.methods.objectives.OBJECTIVES)
    gamma: float = 1.0
    mask: Literal["auto", "pos_neg", "all"] = "auto"  # auto: the preset's (WSDHQ pos_neg, DPQ all)
    cls_weight: float = 0.1  # DPQ's λ on the classification loss (presets with a classifier)
    multi_label: bool = True  # classification: sigmoid BCE (True) or softmax CE (single-label)

    def __post_init__(self):
        at_least(self, "gamma", 0)
        at_least(self, "cls_weight", 0)


@dataclass
class AdditiveConfig:
    """WSDHQ's additive quantizer (M full-dimensional codebooks) and its alternating schedule."""

    kind: Literal["additive"] = "additive"
    M: int = 4  # codebooks; bits = M·log2 K
    K: int = 256
    lambda_q: float = 1e-4  # weight of the network's quantization loss λ·‖V̄(t − t̂)‖²
    icm_sweeps: int = 3
    # ICM from empty codes, repeated from this many random block orders, best code per sample kept.
    # The authors run 1; with 1, greedy ICM on the dense codebooks a least-squares solve leaves gets
    # stuck in poor codes, the next solve fits those, and the codebooks collapse (measured on real
    # MIRFLICKR embeddings, M=4: error 0.079 -> 0.19 and ~180/256 live codewords after 3 rounds,
    # against 0.020 -> 0.011 and ~245/256 with 8; docs/quantizers.md).
    icm_restarts: int = 8
    ridge: float = 1e-3
    update_every: int = 2  # epochs between codebook updates (authors: 2)
    kmeans_sample: int = 20000  # rows per rank gathered for k-means starts and dead-codeword re-seeding
    # ICM + least-squares rounds per codebook update (the authors: 1). Three rounds, with dead
    # codewords re-seeded after each, let the codebooks follow an encoder that moved since the last
    # update: on the digits demo (M=1/2) >= 94% of codewords stay live after every update, and the
    # quantized mAP stays within 0.001 of the float embeddings (docs/quantizers.md).
    iters: int = 3
    # Dead codewords after each solve: "reseed" from the worst-coded rows of the gathered sample
    # (this project's choice: a codeword left where the features were when it died is never chosen
    # again as the encoder moves) or "restore" their previous values (the authors' code).
    dead_codewords: Literal["reseed", "restore"] = "reseed"
    # Where each update's rounds start: the previous codebooks ("warm", the authors), block k-means
    # on the current embeddings ("kmeans"), or both, keeping the lower error on the gathered sample
    # ("best": after two epochs the encoder can have moved so far that warm rounds end 6x worse than
    # a fresh start, measured on MIRFLICKR; docs/quantizers.md). "best" runs the rounds twice.
    start: Literal["warm", "kmeans", "best"] = "best"

    def __post_init__(self):
        _check_code(self)
        for key in ("icm_sweeps", "icm_restarts", "update_every", "iters"):
            at_least(self, key, 1)
        at_least(self, "lambda_q", 0)
        at_least(self, "ridge", 0)
        require(self.kmeans_sample >= self.K, "kmeans_sample",
                f"must be >= K ({self.K}): k-means needs K rows, got {self.kmeans_sample}")


@dataclass
class ProgressiveConfig:
    """DPQ's progressive (residual) codebooks, trained by gradient: L_Q = τ(D_soft + μ D_hard + ν JCL)."""

    kind: Literal["progressive"] = "progressive"
    M: int = 4  # levels; bits = M·log2 K, and every prefix is a shorter code
    K: int = 256
    tau: float = 1.0
    mu: float = 1.0
    nu: float = 0.1
    softmax_gamma: float = 1.0  # soft-assignment temperature (code: 1; paper: "large")
    end_to_end: bool = False  # paper claim: L_Q also trains the network; False = code parity (C only)
    feature_epochs: int = 32  # epochs before L_Q switches on (DPQ: 32 of 64; lower it for short runs)
    # How the codebooks start. "random": DPQ's N(0, 0.01²) (code parity); "kmeans": residual k-means
    # on the embeddings just before L_Q switches on (this project's choice: short weak-tag runs leave
    # random codebooks nearly where they started); "auto": the preset's (kmeans for the weak-tag
    # methods, random for DPQ).
    init: Literal["auto", "kmeans", "random"] = "auto"
    kmeans_sample: int = 20000  # rows per rank gathered for the k-means start
    # PHPQ's partial codebook attention: the soft assignment keeps each residual's top_k codeword
    # logits (the rest -inf before the softmax); 0 (or K): the full softmax. Hard path unchanged.
    top_k: int = 0

    def __post_init__(self):
        _check_code(self)
        _check_top_k(self)
        for key in ("tau", "mu", "nu", "feature_epochs"):
            at_least(self, key, 0)
        require(self.softmax_gamma > 0, "softmax_gamma", f"must be > 0, got {self.softmax_gamma!r}")
        require(self.kmeans_sample >= self.K, "kmeans_sample",
                f"must be >= K ({self.K}): k-means needs K rows, got {self.kmeans_sample}")


@dataclass
class ProductConfig:
    """Gradient-trained product codebooks (M blocks of K unit codewords, cosine assignment), shared
    by MeCoQ and MoPQ (``trainer.quantizers.ProductQuantizer``)."""

    kind: Literal["product"] = "product"
    M: int = 4  # blocks of D/M dims (np.array_split); bits = M·log2 K
    K: int = 256
    alpha: float = 10.0  # soft assignment softmax_k(α·cos) (MeCoQ: 10)
    # "kmeans": spherical k-means per block on the embeddings after ``kmeans_epoch`` epochs (this
    # project's choice for short runs on few images); "random": normalised Gaussian codewords only.
    init: Literal["auto", "kmeans", "random"] = "auto"
    kmeans_epoch: int = 1  # epochs of contrastive training before the k-means start
    kmeans_sample: int = 20000  # rows per rank gathered for the k-means start (and the refit)
    # PHPQ's partial codebook attention: each block's soft assignment keeps its top_k codeword
    # logits (the rest -inf before the softmax); 0 (or K): the full softmax. The straight-through
    # hard path's forward is unchanged (its argmax is always kept).
    top_k: int = 0
    # After the last epoch, re-estimate the codebooks once by spherical k-means per block on the
    # trained encoder's training embeddings (the same fit as the start). The contrastive loss trains
    # the encoder through soft codes that stay diffuse, so the gradient-trained codewords lag the
    # embeddings the hard codes are taken from; measured in docs/results.md (MeCoQ section).
    refit: bool = False

    def __post_init__(self):
        _check_code(self)
        _check_top_k(self)
        require(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha!r}")
        at_least(self, "kmeans_epoch", 1)
        require(self.kmeans_sample >= self.K, "kmeans_sample",
                f"must be >= K ({self.K}): k-means needs K rows, got {self.kmeans_sample}")


QuantizerConfig = Union[AdditiveConfig, ProgressiveConfig, ProductConfig]


@dataclass
class Views:
    """The second view of an input for the contrastive objectives: ``dropout`` (each input value
    zeroed with this probability, the rest scaled by 1/(1-p)) then Gaussian ``noise`` of this
    standard deviation relative to each row's RMS. On backbone features this is the whole
    augmentation (the images are not seen again); on images it is pixel dropout and noise."""

    dropout: float = 0.2
    noise: float = 0.1

    def __post_init__(self):
        within(self, "dropout", 0, 1, high_open=True)
        at_least(self, "noise", 0)


@dataclass
class MeCoQLossConfig:
    """MeCoQ's loss on two views' soft reconstructions (methods.md §3):
    L = contrastive(T, debiased with τ⁺) + λ_H·entropy(p) + γ_C·mean c_mkᵀc_mk' , negatives = the
    other in-batch views (gathered across workers) + the code memory from ``memory_epoch``."""

    kind: Literal["mecoq"] = "mecoq"
    temperature: float = 0.4  # T (Flickr 16 bits: 0.4)
    debias: bool = True  # Chuang et al.'s debiased estimator ("debias" mode) or plain ("simple")
    pos_prior: float = 0.15  # τ⁺
    entropy_weight: float = 0.5  # λ_H
    codeword_weight: float = 0.5  # γ_C; here with gradient (the released code detaches it)
    memory_size: int = 384  # soft codes in the FIFO (0: no memory)
    memory_epoch: int = 2  # epochs before the memory joins the negatives (Flickr: 5)
    views: Views = field(default_factory=Views)

    def __post_init__(self):
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature!r}")
        within(self, "pos_prior", 0, 1, high_open=True)
        for key in ("entropy_weight", "codeword_weight", "memory_size", "memory_epoch"):
            at_least(self, key, 0)


@dataclass
class MoPQLossConfig:
    """MoPQ's Multinoulli contrastive loss: −log softmax_j ⟨q_i, k̂_j⟩/T over the batch's keys
    (gathered across workers), k̂ the straight-through hard reconstruction of the coded side, plus
    ``dense_weight`` × the same loss on the unquantized keys (the released code's first term)."""

    kind: Literal["mopq"] = "mopq"
    # "tags": the image's merged-tag embedding is the other side; "views": a second view of the image
    keys: Literal["tags", "views"] = "tags"
    temperature: float = 0.1
    dense_weight: float = 1.0
    cross_device: bool = True  # all-gather q, k, k̂ across workers (Differentiable Cross-device Sampling)
    views: Views = field(default_factory=Views)

    def __post_init__(self):
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature!r}")
        at_least(self, "dense_weight", 0)


LossConfig = Union[MarginLossConfig, MeCoQLossConfig, MoPQLossConfig]


def _check_code(cfg) -> None:
    at_least(cfg, "M", 1)
    within(cfg, "K", 1, 256)  # codes are uint8


def _check_top_k(cfg) -> None:
    require(0 <= cfg.top_k <= cfg.K, "top_k",
            f"the codewords each soft assignment keeps: 0 (all) to K ({cfg.K}), got {cfg.top_k}")


@dataclass
class MethodConfig:
    name: Literal["wsdhq", "wsdhq_progressive", "dpq", "mecoq", "mopq"] = "wsdhq"
    # the tag / label embedding dimension; 0: taken from them (the tag artifact's, or
    # LABEL_EMBED_DIM for DPQ's generated label embeddings)
    embed_dim: int = 0
    space: Literal["auto", "sphere", "raw"] = "auto"  # where codes live; auto: the preset's
    seed: int = 0
    loss: Optional[LossConfig] = None  # None: the preset's kind with its defaults
    quantizer: Optional[QuantizerConfig] = None  # None: the preset's kind with its defaults

    @classmethod
    def prepare_config(cls, data: dict) -> dict:
        """A quantizer section without ``kind`` takes the preset's, so ``method.name=dpq
        method.quantizer.M=8`` configures DPQ's progressive quantizer."""
        spec = METHODS.get(data.get("name", "wsdhq"))
        for section, kind in (("quantizer", spec and spec.quantizer), ("loss", spec and spec.loss)):
            q = data.get(section)
            if spec is not None and (q is None or (isinstance(q, dict) and "kind" not in q)):
                data[section] = {"kind": kind, **(q or {})}
        q = data.get("quantizer")
        if isinstance(q, dict) and q.get("kind") == "additive" and "top_k" in q:
            raise ConfigError("partial codebook attention restricts a soft assignment; the "
                              "additive quantizer has none (ICM codes, least-squares codebooks): use it with "
                              "quantizer.kind=progressive or product (wsdhq_progressive, dpq, mecoq, mopq)",
                              "quantizer.top_k")
        return data

    @property
    def spec(self) -> MethodSpec:
        return METHODS[self.name]

    def __post_init__(self):
        if self.name not in METHODS:
            raise ConfigError(f"unknown method {self.name!r}; known: {', '.join(METHODS)}", "name")
        at_least(self, "embed_dim", 0)
        spec = self.spec
        if self.quantizer is None:
            self.quantizer = {"additive": AdditiveConfig, "progressive": ProgressiveConfig,
                              "product": ProductConfig}[spec.quantizer]()
        if self.loss is None:
            self.loss = {"margin": MarginLossConfig, "mecoq": MeCoQLossConfig, "mopq": MoPQLossConfig}[spec.loss]()
        if self.space == "auto":
            self.space = spec.space
        if isinstance(self.loss, MarginLossConfig) and self.loss.mask == "auto":
            self.loss.mask = spec.margin_mask
        q = self.quantizer
        if isinstance(q, (ProgressiveConfig, ProductConfig)) and q.init == "auto":
            q.init = spec.progressive_init
        # the contrastive objectives learn through the codes: they need the product codebooks'
        # soft and straight-through reconstructions
        require(isinstance(self.loss, MarginLossConfig) or isinstance(q, ProductConfig), "quantizer.kind",
                f"method.loss.kind={self.loss.kind} needs quantizer.kind=product, got {q.kind}")
        require(not isinstance(q, ProductConfig) or not self.embed_dim or q.M <= self.embed_dim,
                "quantizer.M", f"must be <= method.embed_dim ({self.embed_dim}) for the product "
                f"quantizer, got {q.M}")
        # the additive quantizer's k-means start splits the dimensions into M blocks
        require(not isinstance(q, AdditiveConfig) or not self.embed_dim or q.M <= self.embed_dim,
                "quantizer.M", f"must be <= method.embed_dim ({self.embed_dim}) for the additive "
                f"quantizer, got {q.M}")

    @property
    def kmeans_start(self) -> bool:
        """Whether the codebooks start from k-means on the embeddings (needs faiss and >= K samples)."""
        q = self.quantizer
        return isinstance(q, AdditiveConfig) or q.init == "kmeans"

    @property
    def end_to_end(self) -> bool:
        """Whether the codebooks' forward sees the embeddings with their gradient: DPQ's option;
        always for the product kind (the contrastive losses train the encoder through the codes)."""
        q = self.quantizer
        return isinstance(q, ProductConfig) or getattr(q, "end_to_end", False)


@dataclass
class OptimConfig:
    kind: Literal["adam", "sgd"] = "adam"  # WSDHQ: Adam 3e-4; DPQ: SGD momentum 0.9
    lr: float = 3e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    decay: float = 0.5  # lr multiplier per ``decay_every_steps``
    decay_every_steps: int = 300  # 0 disables
    staircase: bool = True  # WSDHQ staircase; DPQ continuous (decay=0.9, every 10000, staircase False)
    codebook_lr: float = 1e-4  # Adam on gradient-trained codebooks (same decay law)

    def __post_init__(self):
        for key in ("lr", "weight_decay", "decay_every_steps", "codebook_lr"):
            at_least(self, key, 0)
        within(self, "momentum", 0, 1, high_open=True)
        require(0 < self.decay <= 1, "decay", f"must be in (0, 1], got {self.decay!r}")


_TOP = {"embed_dim", "space", "seed"}
_LOSS = {"gamma", "mask", "cls_weight", "multi_label", "temperature", "debias", "pos_prior",
         "entropy_weight", "codeword_weight", "memory_size", "memory_epoch", "views", "keys",
         "dense_weight", "cross_device"}


def method_config(name: str = "wsdhq", **keys) -> MethodConfig:
    """A ``MethodConfig`` from flat keyword arguments, each routed to its section (top level,
    ``loss`` or ``quantizer``), then built as the YAML loader builds it (preset defaults, ranges
    checked): ``method_config("dpq", M=3, K=8, feature_epochs=1, cls_weight=0.2)``. For Python
    callers (tests, benchmarks); configs on disk use the sections."""
    from shards.config import from_dict

    data: dict = {"name": name, "loss": {}, "quantizer": {}}
    for key, value in keys.items():
        section = data if key in _TOP else data["loss"] if key in _LOSS else data["quantizer"]
        section[key] = value
    return from_dict(MethodConfig, data, "method")
