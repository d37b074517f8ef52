"""DVC stage `augment`: `python stages/augment.py --dataset <name>` (see dvc.yaml)."""

import sys

from medimg.cli import run_stage

if __name__ == "__main__":
    run_stage(["augment", *sys.argv[1:]])
