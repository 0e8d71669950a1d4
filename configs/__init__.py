"""The training recipes, one config file per recipe (`get_config(variant)`).

This directory is installed as the package `bytelm.configs` (setup.py maps it), so that
`bytelm-train --config mrt5` finds a recipe by name after `pip install`; in a checkout,
`python train.py --config configs/mrt5.py` reads the same files by path. A config that builds on
another loads it by path from beside itself, which holds in both places.
"""
