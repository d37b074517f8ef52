"""DVC stage `evaluate`: `python stages/evaluate.py --run <name>` (see dvc.yaml)."""

import sys

from medimg.cli import run_stage

if __name__ == "__main__":
    run_stage(["evaluate", *sys.argv[1:]])
