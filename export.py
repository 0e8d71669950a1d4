"""Export a trained model for shipping: python export.py WORKDIR OUT_DIR [--dtype bfloat16].

The installed `bytelm-export` is the same command (bytelm/cli/export.py, which has the flags).
"""

from bytelm.cli import export

if __name__ == "__main__":
  export.main()
