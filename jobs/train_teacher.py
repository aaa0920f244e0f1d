"""`ray job submit -- python jobs/train_teacher.py --config C [--set k=v ...]`: the same as `mid teacher` (see pipeline/cli.py)."""
import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["teacher", *sys.argv[1:]]))
