"""Training a student: the TRL trainer, its callbacks, batch arithmetic, checkpoints, ranks, disk."""
