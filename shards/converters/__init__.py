"""Source layouts -> shard sets. Each converter streams its source into a ``DatasetWriter``."""
