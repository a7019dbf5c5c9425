"""Tag semantics: vocabulary, co-occurrence, embeddings, graph enhancement and DBSCAN merging."""
from trainer.tags.artifact import ArtifactError, TagSemantics
from trainer.tags.build import (NoTagsError, TagConfig, VocabConfig, build_from_matrix, build_from_shards,
                                build_semantics)
from trainer.tags.graph import GraphConfig
from trainer.tags.normalize import NormalizeConfig
from trainer.tags.vectors import VectorConfig, VectorSourceError, VectorFileError

__all__ = ["ArtifactError", "GraphConfig", "NoTagsError", "NormalizeConfig", "TagConfig", "TagSemantics",
           "VectorConfig", "VectorSourceError", "VectorFileError", "VocabConfig",
           "build_from_matrix", "build_from_shards", "build_semantics"]
