"""The synthetic raw corpus is learnable: from raw files through the real extractors, SDT beats chance clearly.

The demo's own numbers (README: 60-85 % test accuracy) come from the same path with all three
modalities; this test leaves the slow face extraction out and keeps the corpus at the demo's size.
"""
from __future__ import annotations

import pytest

from ercpipe import synthetic
from ercpipe.datasets.build import build_manifest
from ercpipe.datasets.iemocap import DEFAULT_SPLIT_FILE
from ercpipe.datasets.media_prep import write_utterance_audio
from ercpipe.features import audio, text
from ercpipe.features.interface import ExtractionContext
from ercpipe.train import run_training

CHANCE = 100 / 6  # six IEMOCAP classes


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("learnable")
    raw, out = root / "raw", root / "features"
    synthetic.generate_iemocap(raw, {"seed": 7, "dialogues": {"train": 16, "valid": 4, "test": 5}}, DEFAULT_SPLIT_FILE)
    build_manifest("iemocap_syn", {"format": "iemocap", "root": str(raw)}, out)
    manifest = out / "manifest.tsv"
    write_utterance_audio(manifest, 0, 1, out / "wavs", threads=2)
    features = {"text": out / "text.h5", "audio": out / "audio.h5"}
    text.extract_shard(manifest, {"model": "packaged:minilm"}, features["text"], threads=2)
    audio.extract_shard(manifest, {"feature_set": "IS10"}, features["audio"], threads=2,
                        context=ExtractionContext(audio_dir=out / "wavs"))
    return root, manifest, features


@pytest.mark.parametrize("preset", ["sdt", "sdt-vega-backbone"])
def test_sdt_on_the_synthetic_corpus_beats_chance_clearly(extracted, preset):
    root, manifest, features = extracted
    experiment = {"preset": preset, "features": {"text": "minilm", "audio": "is10"},
                  "model": {"hidden_dim": 128, "n_heads": 2},
                  "train": {"lr": 1e-3, "batch_size": 2, "epochs": 20, "patience": 8}}
    metrics = run_training(manifest, features, None, experiment, 0, root / preset, device="cpu", threads=2)
    assert metrics["test"]["n"] >= 25
    assert metrics["test"]["accuracy"] > 2.5 * CHANCE, metrics["test"]
    assert metrics["valid"]["accuracy"] > 2.5 * CHANCE, metrics["valid"]
