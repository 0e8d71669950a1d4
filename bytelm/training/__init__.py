"""Training: the loop, the optimizer, sharding, metrics, evaluation and the training budget.
A run's workdir (config.json, checkpoints, lock, export, loading) is bytelm.runs."""

from bytelm.training.trainer import Summary, train_and_evaluate
from bytelm.training.reuse import train_unless_finished
