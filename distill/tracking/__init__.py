"""MLflow: phase runs and their reuse (keys, key locks), lineage tags, the store, shards, the model registry."""
