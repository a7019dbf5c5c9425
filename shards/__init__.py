"""WebDataset shard data plane: schema, converters, writers, storage (local + S3) and the streaming reader."""
