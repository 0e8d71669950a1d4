"""Train a bytelm model: python train.py --config configs/byt5.py [--workdir DIR] [--config.x=y].

The installed `bytelm-train` is the same command (bytelm/cli/train.py, which has the flags).
"""

from bytelm.cli import train

if __name__ == "__main__":
  train.main()
