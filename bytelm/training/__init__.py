"""Training: the loop, checkpoints, sharding, optimizers and metrics."""

from bytelm.training.trainer import Summary, train_and_evaluate
from bytelm.training.reuse import train_unless_finished
