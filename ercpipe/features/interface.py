"""The one call shape of every extractor, and what an extractor may be told besides its setting.

Every extractor module (registered in ercpipe.features.EXTRACTORS) defines

    extract_shard(manifest_path, settings, out_path, *, threads=1, device="auto", context=None) -> None

which reads every row of `manifest_path` (a pipeline job gets its own shard's manifest, written by the
rule build_manifest_shard), resolves `settings` (ercpipe.features.settings), and writes one HDF5 feature
file to `out_path` (ercpipe.io.features). `device` is a torch device ("auto" = CUDA when there is one);
an extractor that runs on the CPU only (openSMILE) ignores it. `context` carries what only one extractor
needs. This module imports nothing heavy: the registry and the rule scripts read it without torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExtractionContext:
    """What an extractor needs besides its setting; each field belongs to one extractor."""

    audio_dir: Path | None = None  # audio: the utterance WAVs and _report.tsv (rule utterance_audio)
    face_selection: dict | None = None  # visual: which face is the speaker (the dataset's face_selection)
    encoder_dir: Path | None = None  # text: a fine-tuned encoder (rule finetune_text_encoder), else None
    # visual weights and a text model folder the setting gives by a relative path: the folder they are looked for
    # in first (predict: the project the checkpoint was trained in), else the current folder. The setting keeps
    # its spelling, which the feature file records and the checkpoint compares.
    base_dir: Path | None = None

    def __post_init__(self) -> None:  # paths given as strings (Snakemake's inputs) become Paths, "" None
        for name in ("audio_dir", "encoder_dir", "base_dir"):
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value) if value not in (None, "") else None)


NO_CONTEXT = ExtractionContext()


def under_base(base_dir: Path | None, value: str, exists=Path.exists) -> str:
    """`value`, a path a setting gives, under `base_dir` when it is relative and there (`exists`), else as given."""
    if base_dir is not None and value and not Path(value).is_absolute() and exists(base_dir / value):
        return str(base_dir / value)
    return value
