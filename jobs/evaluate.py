"""`ray job submit -- python jobs/evaluate.py --config C [--set k=v ...]`: the same as `mid evaluate` (see pipeline/cli.py)."""
import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
