"""DVC stage `tune`: `python stages/tune.py --study <name>` (see dvc.yaml)."""

import sys

from medimg.cli import run_stage

if __name__ == "__main__":
    run_stage(["tune", *sys.argv[1:]])
