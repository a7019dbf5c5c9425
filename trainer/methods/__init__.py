"""Methods composed of parts: ``METHODS`` (the presets), ``MethodConfig`` (loss + quantizer
sections), ``Method`` (encoder + objective + coding) and ``build_method``. Adding a method is a row
in ``METHODS`` plus, when it brings a new loss or coding, one class in ``objectives.py`` (registered
in ``OBJECTIVES`` with its config in ``MethodConfig.loss``) or ``coding.py`` (``CODINGS``, its config
in ``MethodConfig.quantizer``)."""
from trainer.methods.coding import (CODINGS, AdditiveCoding, Collectives, LocalCollectives, ProductCoding,
                                    ProgressiveCoding)
from trainer.methods.config import (METHODS, AdditiveConfig, MarginLossConfig, MeCoQLossConfig, MethodConfig,
                                    MethodSpec, MoPQLossConfig, OptimConfig, ProductConfig, ProgressiveConfig,
                                    Views, method_config)
from trainer.methods.method import (LABEL_EMBED_DIM, Method, MethodNet, MethodOptimizer, build_method,
                                    label_embeddings, unwrap)
from trainer.methods.objectives import OBJECTIVES, MarginObjective, MeCoQObjective, MoPQObjective

__all__ = ["CODINGS", "LABEL_EMBED_DIM", "METHODS", "OBJECTIVES", "AdditiveCoding", "AdditiveConfig", "Collectives",
           "LocalCollectives", "MarginLossConfig", "MarginObjective", "MeCoQLossConfig", "MeCoQObjective", "Method",
           "MethodConfig", "MethodNet", "MethodOptimizer", "MethodSpec", "MoPQLossConfig", "MoPQObjective",
           "OptimConfig", "ProductCoding", "ProductConfig", "ProgressiveCoding", "ProgressiveConfig", "Views",
           "build_method", "label_embeddings", "method_config", "unwrap"]
