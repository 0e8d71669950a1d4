"""The package list, which pyproject.toml cannot express: bytelm's packages, and the top-level
configs/ shipped as bytelm.configs (so `bytelm-train --config mrt5` works after install while
the README's `python train.py --config configs/mrt5.py` keeps its path). Everything else is in
pyproject.toml."""

from setuptools import find_namespace_packages, setup

# Namespace packages, as pyproject's packages.find gives: the data folders (bytelm/data/corpus,
# bytelm/demos/diacritics) are listed too, so their package-data ships without a warning.
setup(packages=find_namespace_packages(include=["bytelm", "bytelm.*"]) + ["bytelm.configs"],
      package_dir={"bytelm.configs": "configs"})
