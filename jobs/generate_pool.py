"""`ray job submit -- python jobs/generate_pool.py --config C [--set k=v ...]`: the same as `mid pool` (see pipeline/cli.py)."""
import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["pool", *sys.argv[1:]]))
