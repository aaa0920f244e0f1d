"""The paper's analysis of what MID learns (Figs. 7-14), as functions of models and image tensors.

Pure PyTorch with numpy, scikit-learn (t-SNE), scikit-image (PSNR, SSIM), captum (Grad-CAM) and matplotlib (the
figures); no Ray, MLflow or Zarr. One module per question:

* ``regeneration``: D(E(x)) through a decoder, and its PSNR / SSIM against the clean image (Figs. 7, 11);
* ``features``: encoder features, their t-SNE embedding and how far attacks move them relative to the distance
  between classes (Fig. 9);
* ``saliency``: input-gradient maps (Fig. 8) and Grad-CAM attention maps (Fig. 12), with their similarity to the
  benign map and the image;
* ``sparsity``: the sum of squared weights, the paper's sparsity index (Fig. 10);
* ``frequency``: low- and high-pass FFT filters with a radial cut-off and accuracy under them (Figs. 13-14);
* ``plots``: the matplotlib figures (image grids, curves, scatter panels).

``pipeline/stages/analyze.py`` runs them on an experiment's models and writes each figure with its numbers.
"""
from mid_core.analysis.features import encode, relative_feature_distance, tsne_embedding
from mid_core.analysis.frequency import filtered_accuracy, high_pass, low_pass, radial_mask
from mid_core.analysis.regeneration import PSNR_CAP, psnr_ssim, regenerate, regeneration_quality
from mid_core.analysis.saliency import (
    GradCamUnavailable, benign_similarity, gradcam_maps, image_correlation, input_gradients,
)
from mid_core.analysis.sparsity import squared_weight_sum

__all__ = [
    "PSNR_CAP", "GradCamUnavailable", "benign_similarity", "encode", "filtered_accuracy", "gradcam_maps",
    "high_pass", "image_correlation", "input_gradients", "low_pass", "psnr_ssim", "radial_mask", "regenerate",
    "regeneration_quality", "relative_feature_distance", "squared_weight_sum", "tsne_embedding",
]
