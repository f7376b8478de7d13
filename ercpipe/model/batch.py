"""What the model reads: dialogues (one utterance per row, per-modality features) and padded batches.

Batches are batch-first ([B, L, D]); padding follows spec 1.7 (zeros, label -1, mask False). Training
(ercpipe.train.data reads dialogues from the manifest and HDF5 files) and prediction with a checkpoint
(ercpipe.model.inference) both build them here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Dialogue:
    dialogue_id: str
    split: str
    utterance_ids: list[str]
    features: dict[str, torch.Tensor]  # modality -> float32 [n, D_m]
    present: dict[str, torch.Tensor]  # modality -> bool [n]; False = the modality was missing (row is zeros)
    labels: torch.Tensor  # int64 [n], -1 = no label
    speakers: torch.Tensor  # int64 [n], speaker slot

    def __len__(self) -> int:
        return len(self.utterance_ids)


@dataclass
class Batch:
    dialogue_ids: list[str]
    utterance_ids: list[list[str]]
    features: dict[str, torch.Tensor]  # modality -> [B, L, D]
    present: dict[str, torch.Tensor]  # modality -> bool [B, L]
    mask: torch.Tensor  # bool [B, L]
    labels: torch.Tensor  # int64 [B, L], -1 on padding
    speakers: torch.Tensor  # int64 [B, L], 0 on padding (the model maps padding to slot S)

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(self.dialogue_ids, self.utterance_ids, {m: move(t) for m, t in self.features.items()},
                     {m: move(t) for m, t in self.present.items()}, move(self.mask), move(self.labels),
                     move(self.speakers))


def standardize(dialogues: Sequence[Dialogue], stats: dict[str, dict[str, torch.Tensor]]) -> None:
    """Apply feature standardization statistics ({modality: {mean, std}}, computed on the training split
    by ercpipe.train.data.standardization and stored in the checkpoint) in place; absent rows stay zeros
    (their contract)."""
    for d in dialogues:
        for m, s in stats.items():
            if m in d.features:
                x = (d.features[m] - s["mean"]) / s["std"]
                d.features[m] = torch.where(d.present[m][:, None], x, torch.zeros_like(x))


def collate(dialogues: Sequence[Dialogue]) -> Batch:
    """Pad a list of dialogues to the longest one (spec 1.7, batch-first)."""
    if not dialogues:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(d) for d in dialogues]
    b, length = len(dialogues), max(lengths)
    mask = torch.zeros(b, length, dtype=torch.bool)
    labels = torch.full((b, length), -1, dtype=torch.long)
    speakers = torch.zeros(b, length, dtype=torch.long)
    feats, present = {}, {}
    for m, first in dialogues[0].features.items():
        feats[m] = torch.zeros(b, length, first.shape[1])
        present[m] = torch.zeros(b, length, dtype=torch.bool)
    for i, d in enumerate(dialogues):
        n = lengths[i]
        mask[i, :n] = True
        labels[i, :n] = d.labels
        speakers[i, :n] = d.speakers
        for m in feats:
            feats[m][i, :n] = d.features[m]
            present[m][i, :n] = d.present[m]
    return Batch([d.dialogue_id for d in dialogues], [d.utterance_ids for d in dialogues], feats, present, mask,
                 labels, speakers)
