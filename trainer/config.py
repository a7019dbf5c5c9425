"""The root of a training run's typed config tree: the components' own configs plus the run's.

``configs/*.yaml`` is this tree written out; ``key.sub=value`` overrides on the command line apply
on top (``shards.config.load``). Components own their sections (``reader`` is the shard reader's,
``encoder`` and ``method`` the method's, ``training.optim`` the method's optimizer); the sections defined here are the ones only the distributed loop reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from shards.config import above, at_least, require
from shards.reader import ReaderConfig
from trainer.encoders import EncoderConfig
from trainer.methods import MethodConfig, OptimConfig


@dataclass
class DataConfig:
    train: str = ""   # training shard set: a directory or s3:// prefix holding manifest.json
    tags: str = ""    # tag semantics artifact directory (python -m trainer.tags build)


@dataclass
class ScalingConfig:
    """Ray Train workers. ``num_workers: 0`` runs the loop in this process (Ray Train local mode)."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0          # only with use_gpu
    collective_timeout_s: int = 1800      # torch.distributed + Ray Train report barrier; finite
    worker_env: dict[str, str] = field(default_factory=dict)  # e.g. GLOO_SOCKET_IFNAME, NCCL_DEBUG

    def __post_init__(self):
        at_least(self, "num_workers", 0)
        above(self, "cpus_per_worker", 0)
        above(self, "gpus_per_worker", 0)
        at_least(self, "collective_timeout_s", 1)


@dataclass
class DeepSpeedConfig:
    zero_stage: Literal[1, 2] = 1         # bf16 on GPU, fp32 on CPU (chosen from use_gpu)


@dataclass
class TrainingConfig:
    epochs: int = 10
    seed: int = 0
    engine: Literal["ddp", "deepspeed"] = "ddp"
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    def __post_init__(self):
        at_least(self, "epochs", 1)


@dataclass
class StorageConfig:
    """Where the run lives: ``<path>/<name>/`` (local or s3://). The same name resumes that run."""

    path: str = "runs"
    name: str = "wsdhq"
    keep_checkpoints: int = 2
    # Epochs between checkpoints (and the last epoch always). 1 for long epochs; raise it when an
    # epoch is shorter than writing one (a recovery then repeats up to checkpoint_every - 1 epochs).
    checkpoint_every: int = 1

    def __post_init__(self):
        require(bool(self.name) and "/" not in self.name, "name",
                f"must be a non-empty name without '/', got {self.name!r}")
        at_least(self, "keep_checkpoints", 1)
        at_least(self, "checkpoint_every", 1)


@dataclass
class FailureConfig:
    max_failures: int = 1                 # worker-group restarts from the last checkpoint; -1: no limit

    def __post_init__(self):
        at_least(self, "max_failures", -1)


@dataclass
class DebugConfig:
    """Fault injection for tests and drills: rank ``fail_rank`` raises once, mid-epoch."""

    fail_at_epoch: Optional[int] = None
    fail_rank: int = 1

    def __post_init__(self):
        at_least(self, "fail_at_epoch", 0, optional=True)
        at_least(self, "fail_rank", 0)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    failure: FailureConfig = field(default_factory=FailureConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def __post_init__(self):
        """Checks across sections (each section checked its own ranges when it was built)."""
        if self.debug.fail_at_epoch is not None:
            ranks = max(1, self.scaling.num_workers)
            require(self.debug.fail_rank < ranks, "debug.fail_rank",
                    f"must be a rank below {ranks} (scaling.num_workers={self.scaling.num_workers}), "
                    f"got {self.debug.fail_rank}")
        require(self.encoder.num_classes == 0 or self.method.spec.classifier, "encoder.num_classes",
                f"only method 'dpq' has a classification head; got {self.encoder.num_classes} with "
                f"method.name={self.method.name!r} (set it to 0)")
