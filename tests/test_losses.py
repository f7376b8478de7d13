"""Loss terms (spec section 4): formulas, every weight and switch, teacher swaps, class weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ercpipe.labels import IEMOCAP_CLASSES, MELD_CLASSES
from ercpipe.model import (LOSS_WEIGHT_KEYS, SWITCH_KEYS, SDTVegaLoss, distillation_kl, inverse_frequency_weights,
                           masked_ce, paper_class_weights)
from ercpipe.train.presets import DEFAULTS, PRESETS

from test_model import forward, random_dialogue, small_model


@pytest.fixture(scope="module")
def model_output():
    model = small_model(seed=3)
    dialogues = [random_dialogue(6, seed=21), random_dialogue(3, seed=22)]
    with torch.no_grad():
        out, batch = forward(model, dialogues)
    return model, out, batch


def total(cfg: dict, model_output, weights=None) -> float:
    model, out, batch = model_output
    loss, parts = SDTVegaLoss(cfg, weights)(model, out, batch.labels, batch.mask)
    assert set(parts) >= {"total"} and float(parts["total"]) == float(loss.detach())
    return float(loss.detach())


def test_official_weights_are_the_spec_table():
    assert len(LOSS_WEIGHT_KEYS) == 18 and len(SWITCH_KEYS) == 4
    cfg = DEFAULTS["loss"]
    effective = {"cls_all_lambda": 0.7299, "cls_v_lambda": 0.7382, "t_cls_all_cls_kl_lambda": 0.1349,
                 "all_clip_lambda": 0.2440, "t_clip_all_clip_kl_lambda": 0.4555, "v_clip_all_clip_kl_lambda": 0.3485}
    group = {"cls": "cls_lambda", "kl": "cls_all_cls_kl_lambda", "clip": "clip_lambda"}
    for key, value in effective.items():
        g = (group["kl"] if "cls_all_cls_kl" in key else "clip_all_clip_kl_lambda" if "clip_all_clip_kl" in key
             else group["clip"] if "clip" in key else group["cls"])
        assert cfg[key] * cfg[g] == pytest.approx(value, abs=6e-5)


@pytest.mark.parametrize("key", LOSS_WEIGHT_KEYS)
def test_every_weight_changes_the_loss(key, model_output):
    base = total(DEFAULTS["loss"], model_output)
    changed = dict(DEFAULTS["loss"], **{key: DEFAULTS["loss"][key] * 2})
    assert total(changed, model_output) != pytest.approx(base, rel=1e-6)


@pytest.mark.parametrize("key", SWITCH_KEYS)
def test_every_switch_changes_the_loss(key, model_output):
    base = total(DEFAULTS["loss"], model_output)
    off = dict(DEFAULTS["loss"], **{key: False})
    assert total(off, model_output) < base  # every term is non-negative


def test_total_is_the_weighted_sum_of_the_parts(model_output):
    model, out, batch = model_output
    cfg = DEFAULTS["loss"]
    _, parts = SDTVegaLoss(cfg, None)(model, out, batch.labels, batch.mask)
    p = {k: float(v) for k, v in parts.items()}
    expected = cfg["cls_lambda"] * (cfg["cls_all_lambda"] * p["ce_all"]
                                    + sum(cfg[f"cls_{m}_lambda"] * p[f"ce_{m}"] for m in "tav"))
    expected += cfg["cls_all_cls_kl_lambda"] * sum(cfg[f"{m}_cls_all_cls_kl_lambda"] * p[f"kl_cls_{m}"] for m in "tav")
    expected += cfg["clip_lambda"] * (cfg["all_clip_lambda"] * p["ce_anchor_all"]
                                      + sum(cfg[f"{m}_clip_lambda"] * p[f"ce_anchor_{m}"] for m in "tav"))
    expected += cfg["clip_all_clip_kl_lambda"] * sum(cfg[f"{m}_clip_all_clip_kl_lambda"] * p[f"kl_anchor_{m}"]
                                                     for m in "tav")
    assert p["total"] == pytest.approx(expected, rel=1e-5)


def test_anchor_kl_is_off_when_the_vega_branch_is_off(model_output):
    no_clip = dict(DEFAULTS["loss"], clip_loss=False)
    both_off = dict(no_clip, clip_all_clip_kl_loss=False)
    assert total(no_clip, model_output) == pytest.approx(total(both_off, model_output))


def test_teacher_swaps_change_the_kl_terms(model_output):
    model, out, batch = model_output
    base = SDTVegaLoss(DEFAULTS["loss"], None)(model, out, batch.labels, batch.mask)[1]
    swapped = SDTVegaLoss(dict(DEFAULTS["loss"], cls_kl_teacher="anchor", anchor_kl_teacher="classification"), None)(
        model, out, batch.labels, batch.mask)[1]
    for m in "tav":
        assert float(swapped[f"kl_cls_{m}"]) != pytest.approx(float(base[f"kl_cls_{m}"]))
        assert float(swapped[f"kl_anchor_{m}"]) != pytest.approx(float(base[f"kl_anchor_{m}"]))
    assert float(swapped["ce_all"]) == float(base["ce_all"])
    # anchor-KL with the classification teacher = KL(l_m || z_all)
    valid = batch.mask & (batch.labels >= 0)
    expected = distillation_kl(out["anchor_logits"]["t"][valid], out["logits"]["all"][valid],
                               model.temperature("clip", "t"), t2=True, class_mean=True, detach_teacher=False)
    assert float(swapped["kl_anchor_t"]) == pytest.approx(float(expected.detach()))


def test_weighted_ce_ignores_padding_and_matches_the_formula():
    logits = torch.randn(2, 4, 3)
    labels = torch.tensor([[0, 2, 1, -1], [1, 1, -1, -1]])
    mask = labels >= 0
    w = torch.tensor([1.0, 2.0, 0.5])
    z, y = logits[mask], labels[mask]
    nll = -F.log_softmax(z, dim=1)[torch.arange(len(y)), y]
    expected = (w[y] * nll).sum() / w[y].sum()
    assert float(masked_ce(z, y, w)) == pytest.approx(float(expected), rel=1e-6)


def test_kl_forms_vega_and_sdt():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    t = 2.0
    q = F.softmax(teacher / t, dim=1)
    per_utt = (q * (q.log() - F.log_softmax(student / t, dim=1))).sum(1)
    vega = distillation_kl(student, teacher, t, t2=True, class_mean=True, detach_teacher=False)
    assert float(vega) == pytest.approx(float(t * t * per_utt.sum() / (5 * 4)), rel=1e-5)
    sdt = distillation_kl(student, teacher, t, t2=False, class_mean=False, detach_teacher=False)
    assert float(sdt) == pytest.approx(float(per_utt.mean()), rel=1e-5)


def test_kl_teacher_gets_gradients_unless_detached():
    student, teacher = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    theta = torch.tensor(math.log(2.0), requires_grad=True)
    distillation_kl(student, teacher, theta.exp(), t2=True, class_mean=True, detach_teacher=False).backward()
    assert teacher.grad.abs().sum() > 0 and theta.grad != 0  # O11: teacher and temperature are trained
    teacher.grad = None
    distillation_kl(student, teacher, 2.0, t2=True, class_mean=True, detach_teacher=True).backward()
    assert teacher.grad is None


def test_sdt_preset_uses_a_fixed_temperature_and_sdt_kl(model_output):
    sdt_model = small_model(vega=False, head_type="sdt", learnable_temperatures=False, fixed_temperature=1.0)
    assert sdt_model.temperature("cls", "t") == 1.0
    assert not any("temp" in n for n, _ in sdt_model.named_parameters())
    cfg = PRESETS["sdt"]["loss"]
    with torch.no_grad():
        out, batch = forward(sdt_model, [random_dialogue(5, seed=30)])
    loss, parts = SDTVegaLoss(cfg, None)(sdt_model, out, batch.labels, batch.mask)
    assert set(parts) == {"ce_all", "ce_t", "ce_a", "ce_v", "kl_cls_t", "kl_cls_a", "kl_cls_v", "total"}
    expected = sum(float(v) for k, v in parts.items() if k != "total")  # all weights 1
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_class_weights():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, -1])
    weights, absent = inverse_frequency_weights(labels, 4)
    np.testing.assert_allclose(weights, [1.0, 2.0, 4.0, 4.0])  # class 3 absent -> largest weight
    assert absent == [3]
    iemocap = paper_class_weights(IEMOCAP_CLASSES)
    np.testing.assert_allclose(iemocap, [2.85339499, 1.70571959, 1.08255267, 1.67633724, 1.77617681, 1.0])
    # whole-dataset counts (spec 4.2): weight = max count / count
    np.testing.assert_allclose(iemocap, 1849 / np.array([648, 1084, 1708, 1103, 1041, 1849]), rtol=1e-6)
    meld = paper_class_weights(MELD_CLASSES)
    np.testing.assert_allclose(meld, 6436 / np.array([6436, 1636, 358, 1002, 2308, 361, 1607]), rtol=1e-6)
    assert paper_class_weights(["calm", "upset"]) is None
    with pytest.raises(ValueError, match="no labelled"):
        inverse_frequency_weights(np.array([-1, -1]), 3)


def test_class_weights_change_the_loss(model_output):
    base = total(DEFAULTS["loss"], model_output)
    assert total(DEFAULTS["loss"], model_output, np.array([1.0, 5.0, 1.0, 0.2])) != pytest.approx(base)
