"""Stage 2 job: pregenerate the adversarial training pool (and the paper protocol's test stores) into Zarr
with Ray Data actors. Rerunning resumes an interrupted generation from the per-block completion record.

    ray job submit --working-dir . -- python jobs/generate_pool.py --config configs/digits_lenet.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import generation  # noqa: E402
from pipeline.cli import main  # noqa: E402


def _extra(p):
    p.add_argument("--no-test-stores", action="store_true", help="only the training pool, not the paper test stores")


if __name__ == "__main__":
    sys.exit(main(__doc__, lambda cfg, args: generation.run(cfg, write_test=not args.no_test_stores), _extra))
