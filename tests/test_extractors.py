"""The extractor registry: one call shape for every modality, modules imported only when used."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from ercpipe.features import EXTRACTORS, ExtractionContext, extractor

REPO = Path(__file__).resolve().parents[1]


def test_importing_the_registry_imports_no_extractor_library():
    code = ("import sys, ercpipe.features, ercpipe.features.interface\n"
            "print(sorted(m for m in ('torch', 'opensmile', 'transformers', 'cv2', 'h5py') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("modality", sorted(EXTRACTORS))
def test_every_extractor_has_the_one_call_shape(modality):
    params = inspect.signature(extractor(modality).extract_shard).parameters
    assert [(p.name, p.kind) for p in params.values()] == [
        ("manifest_path", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("settings", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("out_path", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("threads", inspect.Parameter.KEYWORD_ONLY), ("device", inspect.Parameter.KEYWORD_ONLY),
        ("context", inspect.Parameter.KEYWORD_ONLY)]
    assert params["threads"].default == 1 and params["device"].default == "auto"
    assert params["context"].default is None


def test_unknown_modality_and_missing_context_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match=r"no extractor for modality 'speech'; known: \['audio', 'text', 'visual'\]"):
        extractor("speech")
    with pytest.raises(ValueError, match=r"needs context=ExtractionContext\(audio_dir=\.\.\.\)"):
        extractor("audio").extract_shard(tmp_path / "m.tsv", {}, tmp_path / "o.h5")
    assert ExtractionContext(encoder_dir="", audio_dir="a").encoder_dir is None
    assert ExtractionContext(audio_dir="a").audio_dir == Path("a")
