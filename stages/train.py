"""DVC stage `train`: `python stages/train.py --run <name>` (see dvc.yaml)."""

import sys

from medimg.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
