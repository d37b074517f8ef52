"""DVC stage `augment` (dvc.yaml): `python stages/augment.py --help` says its arguments."""

import sys

from medimg.commands import augment
from medimg.commands.base import run_stage

if __name__ == "__main__":
    run_stage(augment.COMMAND, sys.argv[1:])
