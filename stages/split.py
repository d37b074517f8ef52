"""DVC stage `split`: `python stages/split.py --dataset <name>` (see dvc.yaml)."""

import sys

from medimg.cli import run_stage

if __name__ == "__main__":
    run_stage(["split", *sys.argv[1:]])
