"""DVC stage `evaluate`: `python stages/evaluate.py --run <name>` (see dvc.yaml)."""

import sys

from medimg.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
