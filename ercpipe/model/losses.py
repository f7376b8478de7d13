"""Losses of SDT / SDT-VEGA (spec section 4) and class weights (spec 4.2, O10).

Total (spec 4.4), with every term's weight and the four switches:

    L = 1[cls_loss] * cls_lambda * (cls_all_lambda CE(z_all) + sum_m cls_m_lambda CE(z_m))
      + 1[cls_all_cls_kl_loss] * cls_all_cls_kl_lambda * sum_m m_cls_all_cls_kl_lambda KL_T(z_m || teacher)
      + 1[clip_loss] * clip_lambda * (all_clip_lambda CE(l_all) + sum_m m_clip_lambda CE(l_m))
      + 1[clip_loss] 1[clip_all_clip_kl_loss] * clip_all_clip_kl_lambda
                                              * sum_m m_clip_all_clip_kl_lambda KL_T(l_m || teacher)

The classification-KL teacher is z_all (or l_all with cls_kl_teacher = "anchor"); the anchor-KL teacher
is l_all (or z_all with anchor_kl_teacher = "classification") -- the teacher swaps of paper Table 4.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ercpipe.labels import official_class_list

# Hard-coded whole-dataset weights of the official VEGA code (test labels included, O10), label order of
# spec table 1.3, by the dataset whose class list they weight (ercpipe.labels.official_class_list). Used only
# with train.paper_compat (or loss.class_weights = "paper").
PAPER_CLASS_WEIGHTS: dict[str, tuple[float, ...]] = {
    "iemocap": (2.85339499, 1.70571959, 1.08255267, 1.67633724, 1.77617681, 1.0),
    "meld": (1.0, 3.93398523, 17.97765350, 6.42315388, 2.78856158, 17.82825470, 4.00497818),
}

UNIMODAL = ("t", "a", "v")
LOSS_WEIGHT_KEYS: tuple[str, ...] = (
    "cls_lambda", "cls_all_lambda", "cls_t_lambda", "cls_a_lambda", "cls_v_lambda",
    "cls_all_cls_kl_lambda", "t_cls_all_cls_kl_lambda", "a_cls_all_cls_kl_lambda", "v_cls_all_cls_kl_lambda",
    "clip_lambda", "all_clip_lambda", "t_clip_lambda", "a_clip_lambda", "v_clip_lambda",
    "clip_all_clip_kl_lambda", "t_clip_all_clip_kl_lambda", "a_clip_all_clip_kl_lambda", "v_clip_all_clip_kl_lambda",
)
SWITCH_KEYS: tuple[str, ...] = ("cls_loss", "cls_all_cls_kl_loss", "clip_loss", "clip_all_clip_kl_loss")


def paper_class_weights(classes: Sequence[str]) -> np.ndarray | None:
    """The official hard-coded vector for IEMOCAP / MELD class lists, else None."""
    dataset = official_class_list(classes)
    return None if dataset is None else np.asarray(PAPER_CLASS_WEIGHTS[dataset], dtype=np.float32)


def inverse_frequency_weights(train_labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, list[int]]:
    """(count of the most frequent class) / (count of class), from training labels only.

    The scale does not matter for a weighted mean, so this equals SDT's 1/share weights. A class with no
    training utterance gets the largest weight of the others (it never occurs in the training CE anyway);
    its id is returned so the caller can report it.
    """
    labels = np.asarray(train_labels)
    if labels.size and labels.max() >= n_classes:
        raise ValueError(f"label id {int(labels.max())} is not below n_classes {n_classes} "
                         f"(label ids 0..{n_classes - 1}, -1 = unlabelled)")
    counts = np.bincount(labels[labels >= 0], minlength=n_classes).astype(np.float64)
    if counts.sum() == 0:
        raise ValueError("no labelled training utterances: cannot compute class weights")
    absent = [int(c) for c in np.where(counts == 0)[0]]
    weights = np.zeros(n_classes)
    weights[counts > 0] = counts.max() / counts[counts > 0]
    weights[counts == 0] = weights.max()
    return weights.astype(np.float32), absent


def masked_ce(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Class-weighted mean CE over the given (already valid) utterances: sum w_y nll / sum w_y (spec 4.1)."""
    return F.cross_entropy(logits.float(), labels, weight=weight, reduction="mean")


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: torch.Tensor | float, *,
                    t2: bool, class_mean: bool, detach_teacher: bool) -> torch.Tensor:
    """KL_T(student || teacher) over valid utterances (spec 4.3).

    VEGA form (t2, class_mean): T^2 / (|V| C) * sum_i sum_c q log(q / p). SDT form: sum_c, mean over i,
    no T^2. The teacher is not detached by default (gradients reach the fused head, O11).
    """
    teacher = teacher.detach() if detach_teacher else teacher
    log_q = F.log_softmax(teacher.float() / temperature, dim=-1)
    log_p = F.log_softmax(student.float() / temperature, dim=-1)
    total = F.kl_div(log_p, log_q, log_target=True, reduction="sum")
    n = student.shape[0] * (student.shape[1] if class_mean else 1)
    loss = total / max(n, 1)
    return loss * temperature ** 2 if t2 else loss


class SDTVegaLoss:
    """Computes the total loss and its parts from a model output (see the module docstring)."""

    def __init__(self, loss_cfg: dict, class_weights: np.ndarray | None):
        self.cfg = dict(loss_cfg)
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self._weights_on: dict[torch.device, torch.Tensor] = {}

    def _weights(self, device: torch.device) -> torch.Tensor | None:
        if self.class_weights is None:
            return None
        if device not in self._weights_on:
            self._weights_on[device] = self.class_weights.to(device)
        return self._weights_on[device]

    def __call__(self, model, output: dict, labels: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total, parts): parts are detached 0-d tensors (no device sync here; the caller averages)."""
        cfg = self.cfg
        valid = mask.bool() & (labels >= 0)
        y = labels[valid]
        if y.numel() == 0:  # no labelled utterance (a user's unlabelled batch): zero, not a mean over nothing (NaN)
            total = sum(t.float().sum() for t in output["logits"].values()) * 0.0
            return total, {"total": total.detach()}
        weight = self._weights(y.device)

        def flat(t: torch.Tensor) -> torch.Tensor:
            return t[valid]

        z = {m: flat(t) for m, t in output["logits"].items()}
        anchor = None if output["anchor_logits"] is None else {m: flat(t) for m, t in output["anchor_logits"].items()}
        unimodal = [m for m in UNIMODAL if m in z]
        kl_kw = dict(t2=cfg["kl_t2"], class_mean=cfg["kl_class_mean"], detach_teacher=cfg["detach_teacher"])
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=y.device)

        if cfg["cls_loss"]:
            group = cfg["cls_all_lambda"] * _ce(parts, "ce_all", z["all"], y, weight)
            for m in unimodal:
                group = group + cfg[f"cls_{m}_lambda"] * _ce(parts, f"ce_{m}", z[m], y, weight)
            total = total + cfg["cls_lambda"] * group

        if cfg["cls_all_cls_kl_loss"] and unimodal:
            teacher = z["all"]
            if cfg["cls_kl_teacher"] == "anchor":
                if anchor is None:
                    raise ValueError("loss.cls_kl_teacher = 'anchor' needs the VEGA branch (loss.clip_loss on)")
                teacher = anchor["all"]
            group = 0.0
            for m in unimodal:
                kl = distillation_kl(z[m], teacher, model.temperature("cls", m), **kl_kw)
                parts[f"kl_cls_{m}"] = kl
                group = group + cfg[f"{m}_cls_all_cls_kl_lambda"] * kl
            total = total + cfg["cls_all_cls_kl_lambda"] * group

        if cfg["clip_loss"] and anchor is not None:
            group = cfg["all_clip_lambda"] * _ce(parts, "ce_anchor_all", anchor["all"], y, weight)
            for m in unimodal:
                group = group + cfg[f"{m}_clip_lambda"] * _ce(parts, f"ce_anchor_{m}", anchor[m], y, weight)
            total = total + cfg["clip_lambda"] * group

            if cfg["clip_all_clip_kl_loss"] and unimodal:
                teacher = z["all"] if cfg["anchor_kl_teacher"] == "classification" else anchor["all"]
                group = 0.0
                for m in unimodal:
                    kl = distillation_kl(anchor[m], teacher, model.temperature("clip", m), **kl_kw)
                    parts[f"kl_anchor_{m}"] = kl
                    group = group + cfg[f"{m}_clip_all_clip_kl_lambda"] * kl
                total = total + cfg["clip_all_clip_kl_lambda"] * group

        logged = {k: v.detach() for k, v in parts.items()}
        logged["total"] = total.detach()
        return total, logged


def _ce(parts: dict, name: str, logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    value = masked_ce(logits, y, weight)
    parts[name] = value
    return value
