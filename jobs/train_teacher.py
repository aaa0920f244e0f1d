"""Stage 1 job: train the teacher (E_t, C_t, D_t), the transfer substitute and, if used, the standard model.

    ray job submit --working-dir . -- python jobs/train_teacher.py --config configs/digits_lenet.yaml
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import train_teacher  # noqa: E402
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(__doc__, lambda cfg, args: train_teacher.run(cfg)))
