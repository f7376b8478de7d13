"""VEGA anchors inside the model: class centers, per-image features and stochastic sampling (spec 3.3).

Semantics are the official code's (O15): once per forward call, with probability `p_random_anchor` every
class independently takes one of its image features at random ("random mode"), otherwise every class
takes its center ("center mode"). The paper's lambda is the probability of the *center*; the name here
says what it is. Draws use the global torch CPU generator, so a run's RNG state (saved in the "last"
checkpoint) covers them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class AnchorBank(nn.Module):
    """Holds the anchors as non-persistent buffers (they come from the anchor file, not the checkpoint)."""

    def __init__(self, n_classes: int, dim: int, p_random: float):
        super().__init__()
        if not 0.0 <= p_random <= 1.0:
            raise ValueError(f"p_random_anchor must be in [0, 1], got {p_random}")
        self.n_classes, self.dim, self.p_random = n_classes, dim, p_random
        self.register_buffer("centers", torch.zeros(0), persistent=False)
        self.register_buffer("images", torch.zeros(0), persistent=False)  # [C, N_max, k], zero-padded
        self.register_buffer("counts", torch.zeros(0, dtype=torch.long), persistent=False)
        self.last_mode = ""  # "center" | "random", for tests and diagnostics

    @property
    def ready(self) -> bool:
        return self.centers.numel() > 0

    def set_anchors(self, centers: np.ndarray | torch.Tensor,
                    image_features: Sequence[np.ndarray | torch.Tensor]) -> None:
        """centers [C, k] and one [n_c, k] array per class, in the dataset's label order."""
        centers_t = torch.as_tensor(np.asarray(centers), dtype=torch.float32)
        if centers_t.shape != (self.n_classes, self.dim):
            raise ValueError(f"anchor centers have shape {tuple(centers_t.shape)}, the model expects "
                             f"({self.n_classes}, {self.dim}) (classes, CLIP width)")
        if len(image_features) != self.n_classes:
            raise ValueError(f"{len(image_features)} anchor image sets for {self.n_classes} classes")
        feats = [torch.as_tensor(np.asarray(f), dtype=torch.float32) for f in image_features]
        for c, f in enumerate(feats):
            if f.ndim != 2 or f.shape[0] < 1 or f.shape[1] != self.dim:
                raise ValueError(f"anchor images of class {c} have shape {tuple(f.shape)}, "
                                 f"expected (n >= 1, {self.dim})")
        n_max = max(f.shape[0] for f in feats)
        images = torch.zeros(self.n_classes, n_max, self.dim)
        for c, f in enumerate(feats):
            images[c, : f.shape[0]] = f
        device = self.centers.device
        self.centers = centers_t.to(device)
        self.images = images.to(device)
        self.counts = torch.tensor([f.shape[0] for f in feats], dtype=torch.long, device=device)

    def forward(self, sample: bool) -> torch.Tensor:
        """L2-normalized anchors [C, k]; stochastic only when `sample` (training, or eval if so configured)."""
        if not self.ready:
            raise RuntimeError("the VEGA branch needs anchors: call model.set_anchors(centers, image_features) "
                               "(from ercpipe.anchors.read(path).for_classes(classes)) before the forward pass, or "
                               "call the model with with_vega=False to predict without them (the backbone's logits)")
        anchors = self.centers
        self.last_mode = "center"
        if sample and self.p_random > 0.0:
            if torch.rand(()).item() < self.p_random:
                # one uniform index per class in 0..n_c-1, drawn together (no loop over classes)
                index = (torch.rand(self.n_classes) * self.counts.cpu()).long().clamp_max(self.counts.cpu() - 1)
                rows = torch.arange(self.n_classes, device=self.images.device)
                anchors = self.images[rows, index.to(self.images.device)]
                self.last_mode = "random"
        return F.normalize(anchors, dim=-1, eps=1e-12)


def subsample_anchor_images(image_features: Sequence[np.ndarray], per_class: int, seed: int = 0,
                            class_names: Sequence[str] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Keep `per_class` images per class (a fixed random subset) and recompute the centers from them, as if
    the anchor set had been built with that many images (paper Table 4, "images per class")."""
    rng = np.random.default_rng(seed)
    kept = []
    for c, feats in enumerate(image_features):
        if feats.shape[0] < per_class:
            name = class_names[c] if class_names else str(c)
            raise ValueError(f"model.anchors_per_class = {per_class}, but the anchor set has only {feats.shape[0]} "
                             f"image(s) for class {name!r}; lower the value or add images and rebuild the anchors")
        rows = np.sort(rng.choice(feats.shape[0], size=per_class, replace=False))
        kept.append(np.asarray(feats[rows], dtype=np.float32))
    centers = np.stack([k.mean(axis=0) for k in kept]).astype(np.float32)
    return centers, kept
