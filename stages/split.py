"""DVC stage `split` (dvc.yaml): `python stages/split.py --help` says its arguments."""

import sys

from medimg.commands import split
from medimg.commands.base import run_stage

if __name__ == "__main__":
    run_stage(split.COMMAND, sys.argv[1:])
