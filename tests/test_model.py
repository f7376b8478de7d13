"""SDT / SDT-VEGA module: parameter counts, padding, the eager reference, anchors, ablations, official keys."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from ercpipe.model import (AnchorBank, ModelSpec, OfficialCheckpointError, SDTVegaLoss, build_model,
                           convert_official_state_dict, count_parameters, load_official_backbone,
                           subsample_anchor_images, to_official_state_dict)
from ercpipe.model.batch import Dialogue, collate
from ercpipe.model.convert import official_key, our_key
from ercpipe.testing.reference_sdt_vega import reference_forward
from ercpipe.train.presets import DEFAULTS

IEMOCAP_DIMS = {"text": 1024, "audio": 1582, "visual": 342}
MELD_DIMS = {"text": 1024, "audio": 300, "visual": 342}
SMALL_DIMS = {"text": 10, "audio": 7, "visual": 5}


def small_spec(**kw) -> ModelSpec:
    base = dict(input_dims=SMALL_DIMS, n_classes=4, n_speakers=3, hidden_dim=16, n_heads=2, clip_dim=8)
    base.update(kw)
    return ModelSpec(**base)


def small_model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = build_model(small_spec(**kw))
    if model.spec.vega:
        rng = np.random.default_rng(seed)
        images = [rng.normal(size=(n, 8)).astype(np.float32) for n in (3, 1, 4, 2)]
        images = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in images]
        model.set_anchors(np.stack([x.mean(0) for x in images]), images)
    return model.eval()


def random_dialogue(n: int, seed: int, dims=SMALL_DIMS, n_speakers: int = 3) -> Dialogue:
    g = torch.Generator().manual_seed(seed)
    return Dialogue(f"d{seed}", "test", [f"d{seed}_{i}" for i in range(n)],
                    {m: torch.randn(n, d, generator=g) for m, d in dims.items()},
                    {m: torch.ones(n, dtype=torch.bool) for m in dims},
                    torch.randint(0, 4, (n,), generator=g), torch.randint(0, n_speakers, (n,), generator=g))


def forward(model, dialogues, with_vega=True):
    batch = collate(dialogues)
    return model(batch.features, batch.speakers, batch.mask, with_vega=with_vega), batch


# ------------------------------------------------------------------------------------------ counts

@pytest.mark.parametrize("kw, total, trainable", [
    (dict(input_dims=IEMOCAP_DIMS, n_classes=6, n_speakers=2), 54_075_423, 54_075_423),  # SDT-VEGA, code config
    (dict(input_dims=IEMOCAP_DIMS, n_classes=6, n_speakers=2, vega=False), 50_138_139, 50_138_139),  # backbone
    (dict(input_dims=IEMOCAP_DIMS, n_classes=6, n_speakers=2, vega=False, hidden_dim=1024, n_heads=8,
          head_type="sdt", learnable_temperatures=False), 79_687_704, 79_687_704),  # SDT (paper's 79.7M)
    (dict(input_dims=MELD_DIMS, n_classes=7, n_speakers=9, vega=False, hidden_dim=1024, n_heads=8, head_type="sdt",
          learnable_temperatures=False, gates="identity_frozen"), 78_386_204, 68_949_020),  # SDT MELD, frozen gates
    (dict(input_dims=MELD_DIMS, n_classes=7, n_speakers=9), 49_162_015 + 3_937_284, 49_162_015 + 3_937_284),
    (dict(input_dims=IEMOCAP_DIMS, n_classes=6, n_speakers=2, hidden_dim=1280, n_heads=8, clip_dim=768),
     136_647_707 + 10_493_956, 136_647_707 + 10_493_956),  # the paper's stated width
])
def test_parameter_counts_equal_the_spec(kw, total, trainable):
    model = build_model(ModelSpec(**kw), device="meta")
    assert count_parameters(model) == total
    assert count_parameters(model, trainable_only=True) == trainable


def test_speaker_slots_only_valid_or_test_use_shift_no_other_initial_weight():
    """The speaker table is built first: its size moved every later layer's initial weights, so a test dialogue with
    more speakers changed the run. Its checkpoint record keeps the form older versions read when nothing differs."""
    torch.manual_seed(0)
    two = build_model(ModelSpec(IEMOCAP_DIMS, 6, 2))
    torch.manual_seed(0)
    five = build_model(ModelSpec(IEMOCAP_DIMS, 6, 5, trained_speakers=2))
    for (name, a), (_, b) in zip(two.state_dict().items(), five.state_dict().items()):
        if name == "speaker_embeddings.weight":
            assert torch.equal(a[:2], b[:2]) and b.shape == (6, a.shape[1]) and not b[5].any()
        else:
            assert torch.equal(a, b), name
    assert "trained_speakers" not in ModelSpec(IEMOCAP_DIMS, 6, 2).to_dict()
    assert ModelSpec.from_dict(ModelSpec(IEMOCAP_DIMS, 6, 5, trained_speakers=2).to_dict()).trained_speakers == 2
    with pytest.raises(ValueError, match="trained_speakers must be None or a whole number from 1 to n_speakers"):
        ModelSpec(IEMOCAP_DIMS, 6, 2, trained_speakers=3)


def test_vega_only_parameters_with_a_768_d_clip_space_are_the_papers_4_7m():
    with_vega = build_model(ModelSpec(IEMOCAP_DIMS, 6, 2, clip_dim=768), device="meta")
    without = build_model(ModelSpec(IEMOCAP_DIMS, 6, 2, vega=False), device="meta")
    assert count_parameters(with_vega) - count_parameters(without) == 4_724_740


# ------------------------------------------------------------------------------------------ forward

@pytest.mark.parametrize("mask_fill", [-1e4, -1e10])
def test_padding_does_not_change_valid_outputs(mask_fill):
    model = small_model(mask_fill=mask_fill)
    short, long = random_dialogue(3, seed=1), random_dialogue(9, seed=2)
    with torch.no_grad():
        alone, _ = forward(model, [short])
        padded, batch = forward(model, [long, short])
    assert batch.mask[1].sum() == 3 and batch.labels[1, 3:].eq(-1).all()
    for head in ("t", "a", "v", "all"):
        torch.testing.assert_close(padded["logits"][head][1, :3], alone["logits"][head][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(padded["anchor_logits"][head][1, :3], alone["anchor_logits"][head][0],
                                   rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(padded["fused"][1, :3], alone["fused"][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [
    {},  # SDT-VEGA
    dict(vega=False, head_type="sdt", learnable_temperatures=False, mask_fill=-1e10),  # SDT
    dict(positional_embeddings=False, speaker_embeddings=False),
    dict(intra_encoders=False),
    dict(inter_encoders=False),
    dict(single_branch=True),
    dict(modalities=("text", "visual")),
    dict(modalities=("audio",)),
    dict(head_layers=1, clip_proj_layers=3, clip_proj_activation="silu"),
])
def test_batched_fused_attention_matches_the_eager_reference(kw):
    """The library (packed utterances, fused attention) equals the official padded formulation of spec 2."""
    model = small_model(**kw)
    dialogues = [random_dialogue(n, seed=10 + n) for n in (5, 2, 7)]
    with torch.no_grad():
        out, batch = forward(model, dialogues)
        anchors = model.anchor_bank(sample=False) if model.spec.vega else None
        ref = reference_forward(model, batch.features, batch.speakers, batch.mask, anchors)
    mask = batch.mask
    for head, z in ref["logits"].items():
        torch.testing.assert_close(out["logits"][head][mask], z[mask], rtol=1e-4, atol=1e-5)
    if model.spec.vega:
        for head, z in ref["anchor_logits"].items():
            torch.testing.assert_close(out["anchor_logits"][head][mask], z[mask], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out["fused"][mask], ref["fused"][mask], rtol=1e-4, atol=1e-5)


def test_eval_is_deterministic_and_training_is_not():
    model = small_model(p_random_anchor=0.5)
    dialogues = [random_dialogue(6, seed=3), random_dialogue(4, seed=4)]
    with torch.no_grad():
        first, _ = forward(model, dialogues)
        second, _ = forward(model, dialogues)
        assert model.anchor_bank.last_mode == "center"  # no anchor sampling at evaluation (O7)
        for head in first["logits"]:
            assert torch.equal(first["logits"][head], second["logits"][head])
            assert torch.equal(first["anchor_logits"][head], second["anchor_logits"][head])
        model.train()
        third, _ = forward(model, dialogues)
    assert not torch.equal(first["logits"]["all"], third["logits"]["all"])  # dropout is active in training


def test_anchor_sampling_at_eval_can_be_replicated():
    model = small_model(p_random_anchor=1.0, anchor_sampling_at_eval=True)
    with torch.no_grad():
        forward(model, [random_dialogue(3, seed=5)])
    assert model.anchor_bank.last_mode == "random"


def test_backbone_only_forward_skips_the_vega_branch():
    model = small_model()
    with torch.no_grad():
        full, _ = forward(model, [random_dialogue(4, seed=6)])
        backbone, _ = forward(model, [random_dialogue(4, seed=6)], with_vega=False)
    assert backbone["anchor_logits"] is None
    assert torch.equal(full["logits"]["all"], backbone["logits"]["all"])


def test_anchor_sampling_frequency_matches_p_random_anchor():
    torch.manual_seed(1234)
    bank = AnchorBank(n_classes=3, dim=4, p_random=0.4)
    counts = (2, 5, 1)
    images = [torch.nn.functional.normalize(torch.randn(n, 4), dim=1) for n in counts]
    bank.set_anchors(torch.stack([x.mean(0) for x in images]), images)
    centers = torch.nn.functional.normalize(bank.centers, dim=1)
    n_draws, n_random = 3000, 0
    picked = [np.zeros(n) for n in counts]
    for _ in range(n_draws):
        anchors = bank(sample=True)
        if bank.last_mode == "random":
            n_random += 1
            for c, x in enumerate(images):  # which image of class c was taken?
                picked[c][int(torch.argmax(x @ anchors[c]))] += 1
        else:
            torch.testing.assert_close(anchors, centers)
    # Binomial(3000, 0.4): sd = 26.8; 4.5 sd is a safe bound with a fixed seed.
    assert abs(n_random - 0.4 * n_draws) < 4.5 * np.sqrt(n_draws * 0.4 * 0.6)
    for c, n in enumerate(counts):  # every image of a class is drawn, about uniformly
        assert picked[c].sum() == n_random and (picked[c] > 0).all()
        assert picked[c].max() / picked[c].min() < 1.35 if n > 1 else True
    assert all(bank(sample=False).equal(centers) for _ in range(5))


def test_p_random_anchor_extremes():
    for p, mode in ((0.0, "center"), (1.0, "random")):
        bank = AnchorBank(2, 3, p)
        bank.set_anchors(np.eye(2, 3), [np.eye(3)[:2], np.eye(3)])
        modes = set()
        for _ in range(20):
            bank(sample=True)
            modes.add(bank.last_mode)
        assert modes == {mode}


def test_subsampled_anchor_images_and_centers():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(n, 4)).astype(np.float32) for n in (5, 3)]
    centers, kept = subsample_anchor_images(images, 2, seed=0)
    assert [k.shape[0] for k in kept] == [2, 2]
    np.testing.assert_allclose(centers, np.stack([k.mean(0) for k in kept]))
    assert all(any(np.allclose(row, x) for x in images[c]) for c, k in enumerate(kept) for row in k)
    with pytest.raises(ValueError, match="only 3 image"):
        subsample_anchor_images(images, 4, class_names=["hap", "sad"])


def test_missing_anchors_give_a_clear_error():
    model = build_model(small_spec()).eval()
    with pytest.raises(RuntimeError, match="set_anchors"):
        forward(model, [random_dialogue(2, seed=0)])


# ------------------------------------------------------------------------------------------ structure

def test_ablation_structure():
    no_intra = build_model(small_spec(intra_encoders=False))
    assert "t_t" not in no_intra.encoders and "a_t" in no_intra.encoders
    assert no_intra.reduce["t"].in_features == 2 * 16
    no_inter = build_model(small_spec(inter_encoders=False))
    assert "a_t" not in no_inter.encoders and no_inter.reduce["t"].in_features == 16
    uni = build_model(small_spec(modalities=("audio",)))
    names = {official_key(n).split(".")[0] for n, _ in uni.named_parameters()}
    assert names == {"speaker_embeddings", "acouf_input", "a_a", "a_a_gate", "features_reduce_a", "all_output_layer",
                     "all_clip_proj", "prob_gate_logit"}
    assert not hasattr(uni, "last_gate")
    no_spk = build_model(small_spec(speaker_embeddings=False))
    assert not hasattr(no_spk, "speaker_embeddings")
    single = build_model(small_spec(single_branch=True))
    assert single.heads["all"][0].in_features == 8  # classifies the CLIP projection
    with pytest.raises(ValueError, match="single_branch"):
        small_spec(single_branch=True, vega=False)
    with pytest.raises(ValueError, match="intra_encoders"):
        small_spec(modalities=("text",), intra_encoders=False)


def test_positional_and_speaker_embeddings_change_the_output():
    d = [random_dialogue(6, seed=8)]
    with torch.no_grad():
        base = forward(small_model(), d)[0]["logits"]["all"]
        no_pos = forward(small_model(positional_embeddings=False), d)[0]["logits"]["all"]
        no_spk = forward(small_model(speaker_embeddings=False), d)[0]["logits"]["all"]
    assert not torch.allclose(base, no_pos) and not torch.allclose(base, no_spk)


def test_any_speaker_count_and_padding_row_stays_zero():
    model = small_model(n_speakers=5).train()
    table = model.speaker_embeddings.weight
    assert table.shape == (6, 16) and table[5].abs().sum() == 0
    out, batch = forward(model, [random_dialogue(7, seed=9, n_speakers=5), random_dialogue(2, seed=10, n_speakers=5)])
    out["logits"]["all"][batch.mask].sum().backward()
    assert table.grad[5].abs().sum() == 0 and table.grad[:5].abs().sum() > 0


def test_frozen_identity_gates_are_silu():
    model = small_model(gates="identity_frozen")
    gate = model.gates["t_t"]
    assert not gate.fc.weight.requires_grad and torch.equal(gate.fc.weight, torch.eye(16))
    x = torch.randn(3, 16)
    torch.testing.assert_close(gate(x), torch.nn.functional.silu(x))


def test_half_precision_mask_fill_is_clamped():
    """-1e10 does not fit fp16; the additive mask must still give finite, padding-invariant outputs."""
    from ercpipe.model.layers import Layout, MultiHeadedAttention

    torch.manual_seed(0)
    attn = MultiHeadedAttention(2, 8, 0.0, -1e10).to(torch.float16).eval()
    x = torch.randn(2, 5, 8, dtype=torch.float16)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    both, alone = Layout(mask), Layout(mask[1:, :2])
    out = both.unpack(attn(both.pack(x), both.pack(x), both))
    single = alone.unpack(attn(alone.pack(x[1:, :2]), alone.pack(x[1:, :2]), alone))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1, :2], single[0], rtol=2e-2, atol=2e-2)


def test_layout_packs_only_valid_utterances():
    from ercpipe.model.layers import Layout

    mask = torch.tensor([[True, True, False], [True, False, False]])
    layout = Layout(mask)
    x = torch.arange(6.0).view(2, 3, 1)
    assert layout.pack(x).flatten().tolist() == [0.0, 1.0, 3.0]
    assert layout.unpack(layout.pack(x)).flatten().tolist() == [0.0, 1.0, 0.0, 3.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------ official keys

def official_like_model(seed: int = 0):
    """The official structure at a small width (all key names and the 200-entry layout are the same)."""
    torch.manual_seed(seed)
    return build_model(ModelSpec({"text": 12, "audio": 9, "visual": 6}, n_classes=6, n_speakers=2, hidden_dim=16,
                                 n_heads=4, clip_dim=8))


def test_official_state_dict_round_trip():
    source, target = official_like_model(0), official_like_model(1)
    official = to_official_state_dict(source)
    assert len(official) == 200  # spec 8.1: 200 entries
    assert official["textf_input.weight"].shape == (16, 12, 1)
    assert official["t_t.pos_emb.pe"].shape == (1, 512, 16)
    assert "a_t.transformer_inter.0.self_attn.linear.weight" in official
    assert "t_output_layer.6.weight" in official and "t_clip_proj.0.weight" not in official
    before_vega = target.clip_projs["t"][0].weight.clone()
    load_official_backbone(target, {"state_dict": official})
    src, tgt = source.state_dict(), target.state_dict()
    for key in source.backbone_parameter_names():
        assert torch.equal(src[key], tgt[key]), key
    assert torch.equal(target.clip_projs["t"][0].weight, before_vega)  # VEGA branch untouched
    dialogues = [random_dialogue(4, seed=1, dims={"text": 12, "audio": 9, "visual": 6}, n_speakers=2)]
    with torch.no_grad():
        a = forward(source.eval(), dialogues, with_vega=False)[0]["logits"]["all"]
        b = forward(target.eval(), dialogues, with_vega=False)[0]["logits"]["all"]
    assert torch.equal(a, b)


def test_official_state_dict_file_is_loaded_with_weights_only(tmp_path):
    source, target = official_like_model(0), official_like_model(1)
    path = tmp_path / "IEMOCAP.pth"
    torch.save(to_official_state_dict(source), path)
    load_official_backbone(target, path)
    assert torch.equal(source.gates["a_v"].fc.weight, target.gates["a_v"].fc.weight)


def test_official_state_dict_errors_name_the_keys():
    model = official_like_model()
    official = to_official_state_dict(model)
    broken = dict(official)
    del broken["v_t.transformer_inter.0.feed_forward.w_1.bias"]
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(OfficialCheckpointError, match="v_t.transformer_inter.0.feed_forward.w_1.bias") as err:
        convert_official_state_dict(broken, model)
    assert "extra.weight" in str(err.value) and "official' preset" in str(err.value)
    wrong = dict(official)
    wrong["acouf_input.weight"] = torch.zeros(16, 10, 1)
    with pytest.raises(OfficialCheckpointError, match="acouf_input.weight: file"):
        convert_official_state_dict(wrong, model)
    bad_pe = dict(official)
    bad_pe["t_t.pos_emb.pe"] = torch.zeros(1, 512, 16)
    with pytest.raises(OfficialCheckpointError, match="sinusoidal"):
        convert_official_state_dict(bad_pe, model)
    scalar = dict(official)
    scalar["t_cls_temp"] = scalar["t_cls_temp"].reshape(1)  # a [1]-shaped temperature is accepted
    assert convert_official_state_dict(scalar, model)["cls_temps.t"].shape == ()  # as this model names it


def test_official_names_map_both_ways_for_every_key():
    for spec in (small_spec(), small_spec(vega=False, head_type="sdt", learnable_temperatures=False),
                 small_spec(modalities=("audio",))):
        keys = list(build_model(spec).state_dict())
        flat = [official_key(k) for k in keys]
        assert len(set(flat)) == len(keys) and [our_key(k) for k in flat] == keys
        assert all(our_key(k) == k for k in keys)  # our keys pass through
    assert official_key("encoders.a_t.transformer_inter.0.self_attn.linear.weight") == \
        "a_t.transformer_inter.0.self_attn.linear.weight"
    assert official_key("inputs.v.weight") == "visuf_input.weight" and official_key("cls_temps.t") == "t_cls_temp"
    assert official_key("gates.t_v.fc.weight") == "t_v_gate.fc.weight"
    assert official_key("clip_projs.all.0.bias") == "all_clip_proj.0.bias"


def test_a_checkpoint_with_the_flat_official_names_still_loads(tmp_path):
    """model.pt files written before the modules were grouped by role hold the flat names (t_t, t_t_gate,
    t_cls_temp, t_clip_proj, ...); they load into the same model."""
    from ercpipe.model.checkpoint import checkpoint_payload, load_model
    from ercpipe.train.presets import resolve_experiment

    source = small_model(3)
    payload = checkpoint_payload(source, spec=source.spec, config=resolve_experiment({}), classes=list("abcd"),
                                 epoch=1, seed=0, selection_split="valid", feature_stats=None, features={})
    payload["state_dict"] = {official_key(k): v for k, v in payload["state_dict"].items()}
    assert "t_t_gate.fc.weight" in payload["state_dict"] and "t_cls_temp" in payload["state_dict"]
    torch.save(payload, tmp_path / "model.pt")
    loaded, _, classes = load_model(tmp_path / "model.pt")
    assert classes == list("abcd")
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    dialogues = [random_dialogue(5, seed=2)]
    with torch.no_grad():
        a = forward(source.eval(), dialogues, with_vega=False)[0]["logits"]["all"]
        b = forward(loaded.eval(), dialogues, with_vega=False)[0]["logits"]["all"]
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ speed changes, fp32 exact

def test_fp32_library_equals_the_official_padded_formulation_with_gradients():
    """The speed changes (packed rows, pack/unpack autograd functions, fused attention) leave fp32 results
    where they were: the official padded formulation gives the same logits (1e-5) and gradients."""
    model = small_model()
    dialogues = [random_dialogue(n, seed=20 + n) for n in (6, 3, 9)]
    batch = collate(dialogues)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = SDTVegaLoss(dict(DEFAULTS["loss"]), np.linspace(1, 2, 4).astype(np.float32))
    out = model(batch.features, batch.speakers, batch.mask)
    loss, _ = loss_fn(model, out, batch.labels, batch.mask)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    ref = reference_forward(model, batch.features, batch.speakers, batch.mask, model.anchor_bank(sample=False))
    ref_loss, _ = loss_fn(model, ref, batch.labels, batch.mask)
    ref_grads = torch.autograd.grad(ref_loss, params, allow_unused=True)
    mask = batch.mask
    with torch.no_grad():
        for head in out["logits"]:
            torch.testing.assert_close(out["logits"][head][mask], ref["logits"][head][mask], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        for g, r in zip(grads, ref_grads):
            if g is not None and r is not None:
                torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_pack_and_unpack_gradients():
    from ercpipe.model.layers import Layout

    mask = torch.tensor([[True, True, False], [True, False, False]])
    layout = Layout(mask)
    padded = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    packed = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(layout.pack, (padded,))
    torch.autograd.gradcheck(layout.unpack, (packed,))
    assert torch.equal(layout.unpack(layout.pack(padded))[mask], padded[mask])
    assert layout.unpack(packed)[~mask].eq(0).all()
    dense = Layout(torch.ones(2, 3, dtype=torch.bool))
    assert dense.pack(padded).data_ptr() == padded.data_ptr()  # no padding: a view, no copy


def test_dropout_has_the_standard_distribution_and_follows_the_seed():
    from ercpipe.model.layers import dropout

    x = torch.ones(200_000)
    torch.manual_seed(0)
    y = dropout(x, 0.53, True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.47) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.47))
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.53, True), y)  # same seed, same mask
    assert dropout(x, 0.53, False) is x and dropout(x, 0.0, True) is x
    x.requires_grad_(True)
    dropout(x, 0.3, True).sum().backward()
    values = x.grad.unique()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / 0.7)


def test_training_steps_are_deterministic_for_a_seed():
    """Two models trained from the same seed on the same batches end with identical weights (fp32, dropout on)."""
    loss_fn = SDTVegaLoss(dict(DEFAULTS["loss"]), None)
    dialogues = [random_dialogue(n, seed=30 + n) for n in (4, 7, 2)]
    states = []
    for _ in range(2):
        model = small_model(seed=3, dropout=0.4, head_dropout=0.3).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        torch.manual_seed(11)
        for _ in range(3):
            batch = collate(dialogues)
            out = model(batch.features, batch.speakers, batch.mask)
            loss, _ = loss_fn(model, out, batch.labels, batch.mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_bf16_autocast_on_the_cpu_is_selected_by_train_amp_and_stays_close(monkeypatch):
    import contextlib

    from ercpipe.model import inference
    from ercpipe.model.inference import autocast_context

    cpu = torch.device("cpu")
    assert isinstance(autocast_context(cpu, "off"), contextlib.nullcontext)
    assert isinstance(autocast_context(cpu, "fp16"), contextlib.nullcontext)  # fp16 on a CPU: fp32
    monkeypatch.setattr(inference, "cpu_has_bf16_kernels", lambda: False)  # an AVX2-only CPU: fp32 (20x faster)
    assert isinstance(autocast_context(cpu, "bf16"), contextlib.nullcontext)
    monkeypatch.setattr(inference, "cpu_has_bf16_kernels", lambda: True)
    model = small_model()
    batch = collate([random_dialogue(n, seed=40 + n) for n in (5, 8)])
    with torch.no_grad():
        exact = model(batch.features, batch.speakers, batch.mask)
        with autocast_context(cpu, "bf16"):
            low = model(batch.features, batch.speakers, batch.mask)
    assert low["logits"]["all"].dtype == torch.bfloat16
    torch.testing.assert_close(low["logits"]["all"].float()[batch.mask], exact["logits"]["all"][batch.mask],
                               rtol=0.05, atol=0.05)


def test_training_attention_path_equals_the_fused_one_without_dropout(monkeypatch):
    """In training on the CPU the attention runs the explicit softmax (with the cheap dropout); with the
    dropout draws taken out it gives what the fused SDPA path gives in eval mode."""
    from ercpipe.model import layers

    model = small_model(dropout=0.3)
    batch = collate([random_dialogue(n, seed=50 + n) for n in (7, 3)])
    with torch.no_grad():
        fused = model(batch.features, batch.speakers, batch.mask)["fused"]
        monkeypatch.setattr(layers, "dropout", lambda x, rate, training: x)
        model.train()
        explicit = model(batch.features, batch.speakers, batch.mask)["fused"]
    torch.testing.assert_close(explicit[batch.mask], fused[batch.mask], rtol=1e-5, atol=1e-5)


def test_equal_tensors_are_written_as_equal_bytes(tmp_path):
    """torch.save given the temporary path named the archive's root folder after it, so two runs' model.pt
    differed in bytes with every tensor equal, and checksums could not compare runs."""
    from ercpipe.model.checkpoint import save_torch

    payload = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    (tmp_path / "b").mkdir()
    save_torch(payload, tmp_path / "a.pt")
    save_torch(payload, tmp_path / "b" / "model.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]["w"], payload["state_dict"]["w"])


def test_a_checkpoint_write_that_runs_out_of_room_names_the_file_and_the_space(tmp_path):
    """A full disk (here: a file size limit) while writing last.pt said only "[enforce fail at
    inline_container.cc] unexpected pos ...", naming neither the file nor the cause."""
    code = (
        "import resource, signal, torch\n"
        "from ercpipe.model.checkpoint import save_torch\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        f"save_torch({{'weights': torch.zeros(1 << 20)}}, {str(tmp_path / 'last.pt')!r})\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ercpipe.io.atomic.WriteFailedError: could not write {tmp_path / 'last.pt'}: the write "
                           "stopped after 1 MiB with ")
    assert "MiB free on its disk" in last and "ulimit -f" in last
    assert list(tmp_path.iterdir()) == []  # no partial file under any name


def test_wrong_inputs_of_a_direct_call_are_named():
    """A library user calling the model with their own tensors got torch's shape or dtype errors from deep inside
    (or, for speaker slot n_speakers, silently the padding row's zero embedding)."""
    model = small_model()
    batch = collate([random_dialogue(n, seed=60 + n) for n in (5, 3)])
    features, speakers, mask = batch.features, batch.speakers, batch.mask
    width = SMALL_DIMS["text"]
    cases = [
        ({**features, "text": torch.randn(2, 5, width + 1)}, speakers, mask,
         rf"text features have shape \(2, 5, {width + 1}\), expected \[B, L, width\] = \[2, 5, {width}\]"),
        ({**features, "audio": features["audio"].double()}, speakers, mask,
         r"audio features are torch.float64, the model's weights torch.float32: convert them"),
        ({k: v for k, v in features.items() if k != "visual"}, speakers, mask, r"features lack \['visual'\]"),
        ({**features, "text": features["text"].numpy()}, speakers, mask, r"text features must be a torch tensor"),
        (features, speakers[:, :4], mask, r"speakers must be a \[B, L\] = \[2, 5\] tensor"),
        (features, speakers, mask[0], r"mask must be a \[B, L\] tensor"),
        (features, torch.where(mask, model.spec.n_speakers, 0), mask,
         rf"speaker slots must be in 0..{model.spec.n_speakers - 1}"),
        (features, torch.where(mask, -1, 0), mask, r"speaker slots must be in 0\.\."),
        (features, speakers, mask.flip(1), r"each row must be its utterances first, then padding"),
    ]
    for feats, spk, msk, message in cases:
        with pytest.raises(ValueError, match=message):
            model(feats, spk, msk)
    model(features, torch.where(mask, speakers, 99), mask)  # padded positions' slots are never read
    no_speakers = small_model(speaker_embeddings=False)
    no_speakers(features, None, mask)  # the slots are not read at all
    with pytest.raises(RuntimeError, match="with_vega=False"):
        build_model(small_spec())(features, speakers, mask)  # a VEGA model without anchors


def test_the_data_fields_of_a_spec_are_whole_numbers():
    for kw, name in (({"n_classes": 0}, "n_classes"), ({"n_classes": "3"}, "n_classes"),
                     ({"n_speakers": 0}, "n_speakers"), ({"clip_dim": 0}, "clip_dim"),
                     ({"input_dims": {**SMALL_DIMS, "text": 4.0}}, r"input_dims\['text'\]")):
        with pytest.raises(ValueError, match=rf"{name} must be a whole number >= \d, got"):
            small_spec(**kw)


def test_an_unlabelled_batch_has_a_zero_loss_not_nan():
    from ercpipe.train.presets import resolve_experiment

    model = small_model().train()
    batch = collate([random_dialogue(n, seed=70 + n) for n in (4, 2)])
    out = model(batch.features, batch.speakers, batch.mask)
    loss_fn = SDTVegaLoss(resolve_experiment({"preset": "official"})["loss"], None)
    loss, parts = loss_fn(model, out, torch.full_like(batch.labels, -1), batch.mask)
    assert float(loss.detach()) == 0.0 and list(parts) == ["total"]
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_predict_names_what_is_wrong_with_its_dialogues():
    from ercpipe.model.inference import predict

    model = small_model()
    good = [random_dialogue(n, seed=80 + n) for n in (3, 4)]
    assert len(predict(model, good)) == 7 and len(predict(model, good, batch_size=np.int64(1))) == 7
    without_visual = dataclasses.replace(good[1], features={k: v for k, v in good[1].features.items() if k != "visual"})
    cases = [(good[0], TypeError, r"a list of dialogues; for one write predict\(model, \[dialogue\]\)"),
             ([], ValueError, "no dialogues"),
             ([good[0], without_visual], ValueError, rf"dialogue {good[1].dialogue_id} lacks \['visual'\]"),
             ([dataclasses.replace(good[0], labels=torch.tensor([0, 4, 1]))], ValueError,
              r"has label id 4, but the model has 4 classes .* \(label ids 0..3, -1 = unlabelled\)"),
             # checked before batching, so that a GPU run gets it too (the forward checks CPU batches only)
             ([dataclasses.replace(good[0], speakers=torch.tensor([0, 9, 1]))], ValueError,
              rf"dialogue {good[0].dialogue_id} has speaker slots 0..9, but the model has "
              rf"{model.spec.n_speakers} \(slots 0..{model.spec.n_speakers - 1}\)")]
    for dialogues, error, message in cases:
        with pytest.raises(error, match=message):
            predict(model, dialogues)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        predict(model, good, batch_size=0)


def test_inverse_frequency_weights_name_a_label_outside_the_classes():
    from ercpipe.model.losses import inverse_frequency_weights

    weights, absent = inverse_frequency_weights(np.array([0, 1, 1, -1]), 3)
    assert weights.tolist() == [2.0, 1.0, 2.0] and absent == [2]
    with pytest.raises(ValueError, match=r"label id 5 is not below n_classes 3"):
        inverse_frequency_weights(np.array([0, 1, 5]), 3)
