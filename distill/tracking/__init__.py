"""MLflow: phase runs and their reuse (keys, claims), lineage tags, the store, shards, the model registry."""
