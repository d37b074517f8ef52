"""DVC stage `augment`: `python stages/augment.py --dataset <name>` (see dvc.yaml)."""

import sys

from medimg.cli import main

if __name__ == "__main__":
    sys.exit(main(["augment", *sys.argv[1:]]))
