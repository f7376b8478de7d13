"""Feature extractors: one HDF5 file per (dataset, modality, setting) and dialogue shard.

Every extractor has the same call shape (ercpipe.features.interface):

    extract_shard(manifest_path, settings, out_path, *, threads=1, device="auto", context=None)

and is registered once, below, by the modality it makes; the rule scripts, ercpipe.infer and the
benchmarks run an extractor through `extract_shard(modality, ...)` or `extractor(modality)`. Modules are
imported on first use (each pulls in its own heavy libraries and runs in its own rule env), so importing
this package imports neither torch nor openSMILE:

    text       transformers encoders (RoBERTa, MiniLM) pooled per utterance, optional context
               (text_encoder: the encoder itself, shared with finetune)
    finetune   optional fine-tuning of the text encoder on the train labels before extraction
    audio      openSMILE functionals
    visual     MTCNN faces -> DenseNet embeddings (denseface: the 342-d DenseNet variant)
    pickles    import / export of the community SDT / VEGA feature pickles (explicit opt-in)
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from ercpipe.features.interface import ExtractionContext

# modality -> the module whose extract_shard makes its features (a new extractor: one line here)
EXTRACTORS: dict[str, str] = {
    "text": "ercpipe.features.text",
    "audio": "ercpipe.features.audio",
    "visual": "ercpipe.features.visual",
}


def extractor(modality: str) -> ModuleType:
    """The extractor module of `modality` (imported now, with its libraries)."""
    if modality not in EXTRACTORS:
        raise ValueError(f"no extractor for modality {modality!r}; known: {sorted(EXTRACTORS)}")
    return importlib.import_module(EXTRACTORS[modality])


def extract_shard(modality: str, manifest_path: str | Path, settings: dict | None, out_path: str | Path, *,
                  threads: int = 1, device: str = "auto", context: ExtractionContext | None = None) -> None:
    """Run the `modality` extractor on every row of `manifest_path`, writing `out_path` (a pipeline shard file's
    merged file is removed first: feature_io.remove_merged_file)."""
    from ercpipe.io.features import remove_merged_file

    remove_merged_file(out_path, modality)
    extractor(modality).extract_shard(manifest_path, settings, out_path, threads=threads, device=device,
                                      context=context)


__all__ = ["EXTRACTORS", "ExtractionContext", "extract_shard", "extractor"]
