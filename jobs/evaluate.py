"""Stage 4 job: robust accuracy per attack under the paper / whitebox / transfer protocols.

    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/digits_lenet.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import evaluate  # noqa: E402
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(__doc__, lambda cfg, args: evaluate.run(cfg)))
