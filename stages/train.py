"""DVC stage `train`: `python stages/train.py --run <name>` (see dvc.yaml)."""

import sys

from medimg.cli import run_stage

if __name__ == "__main__":
    run_stage(["train", *sys.argv[1:]])
