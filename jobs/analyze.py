"""`ray job submit -- python jobs/analyze.py --config C [--set k=v ...]`: the same as `mid analyze` (see pipeline/cli.py)."""
import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:]]))
