"""DVC stage `evaluate` (dvc.yaml): `python stages/evaluate.py --help` says its arguments."""

import sys

from medimg.commands import evaluate
from medimg.commands.base import run_stage

if __name__ == "__main__":
    run_stage(evaluate.COMMAND, sys.argv[1:])
