"""The console scripts, one module per command (pyproject.toml's [project.scripts]):
bytelm-train (train.py), bytelm-correct (bytelm.demos.correct), bytelm-score and bytelm-export
(export.py)."""
