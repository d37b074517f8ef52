"""DVC stage `fetch`: `python stages/fetch.py --dataset <name>` (see dvc.yaml)."""

import sys

from medimg.cli import run_stage

if __name__ == "__main__":
    run_stage(["fetch", *sys.argv[1:]])
