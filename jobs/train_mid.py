"""Stage 3 job: MID meta-training of the student encoder on Ray Train, streaming the adversarial store.

    ray job submit --working-dir . -- python jobs/train_mid.py --config configs/digits_lenet.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import train_mid  # noqa: E402
from pipeline.cli import main  # noqa: E402


def _extra(p):
    p.add_argument("--force", action="store_true", help="retrain even if models/<mid.variant>.pt exists (default variant: mid)")


if __name__ == "__main__":
    sys.exit(main(__doc__, lambda cfg, args: train_mid.run(cfg, force=args.force), _extra))
