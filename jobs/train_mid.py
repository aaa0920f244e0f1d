"""`ray job submit -- python jobs/train_mid.py --config C [--set k=v ...]`: the same as `mid train` (see pipeline/cli.py)."""
import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
