"""The paper's sparsity index (Fig. 10): I_sparse = Σ ||θ||², the sum of squared parameters of a model."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def squared_weight_sum(module: nn.Module) -> float:
    """Σ θ² over every parameter of ``module`` (buffers such as BatchNorm statistics excluded).

    A model that keeps fitting its training set with ever larger weights has a growing index; the paper reports
    MID's staying nearly flat after its first epochs while the baseline's grows."""
    return float(sum(p.detach().double().pow(2).sum() for p in module.parameters()))
