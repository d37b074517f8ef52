"""DVC stage `train` (dvc.yaml): `python stages/train.py --help` says its arguments."""

import sys

from medimg.commands import train
from medimg.commands.base import run_stage

if __name__ == "__main__":
    run_stage(train.COMMAND, sys.argv[1:])
