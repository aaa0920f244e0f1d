"""Pure-PyTorch core of Meta Invariance Defense: models, attacks, losses, the meta step, evaluation.

Imports no Ray, MLflow or Zarr, so it runs anywhere PyTorch does.
"""
from mid_core.checkpoint import load_classifier, load_robust_model, load_teacher, save_checkpoint
from mid_core.losses import LossWeights
from mid_core.meta_step import BENIGN, MetaConfig, draw_held_out, meta_step
from mid_core.models import DeployedModel, StandardClassifier, Teacher

__all__ = [
    "BENIGN", "DeployedModel", "LossWeights", "MetaConfig", "StandardClassifier", "Teacher", "draw_held_out",
    "load_classifier", "load_robust_model", "load_teacher", "meta_step", "save_checkpoint",
]
