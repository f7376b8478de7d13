"""Text features: every utterance of a manifest encoded by a Hugging Face encoder (ercpipe.features.text_encoder:
context, pooling, models) and written as one HDF5 feature file.

Empty transcripts (or rows flagged `empty_text`) become zeros with present=False; the reason is logged and
stored as JSON in the file's `absent` attribute. A target longer than `max_length` is truncated at its end
(logged, and listed in the file's `truncated` attribute); a target made only of the tokenizer's unknown
token (emoji, a script its vocabulary lacks) is logged and listed in `unknown_only`. A setting with
`finetune` is extracted with the encoder that fine-tuning made with exactly those settings
(context.encoder_dir).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import torch

from ercpipe.features import settings as settings_mod
from ercpipe.features.interface import NO_CONTEXT, ExtractionContext
from ercpipe.features.text_encoder import (PACKAGED_MINILM, EncodedInput, TextEncoder, TextFeatures, feature_dim,
                                           load_tokenizer_and_model, model_identity, resolve_model_path)
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io

logger = logging.getLogger(__name__)

# Defaults and settings resolution live in ercpipe.features.settings (light: training checks feature files
# with them without this module's libraries); these are their names here.
POOLINGS = settings_mod.TEXT_POOLINGS
DEFAULT_CONTEXT = settings_mod.TEXT_CONTEXT_DEFAULTS
DEFAULT_SETTINGS = settings_mod.TEXT_DEFAULTS
TEXT_FLAGS = ("empty_text",)


# ----------------------------------------------------------------------------------------- settings

context_settings = settings_mod.context_settings
text_settings = settings_mod.text_settings  # validated, defaults filled in
stored_settings = settings_mod.stored_text_settings  # what a feature file's `settings` attribute (and hash) holds


# ----------------------------------------------------------------------------------------- shards

def _log_absent(absent: dict[str, str], truncated: dict[str, int], unknown_only: list[str], total: int) -> None:
    if absent:
        counts = Counter(reason.split(" ")[0] for reason in absent.values())
        logger.warning("text: %d of %d utterances have no features (zeros, present=False): %s; e.g. %s",
                       len(absent), total, dict(counts), ", ".join(list(absent)[:3]))
    if truncated:
        logger.warning("text: %d utterances were longer than max_length and truncated, e.g. %s",
                       len(truncated), ", ".join(f"{u} ({n} tokens)" for u, n in list(truncated.items())[:3]))
    if unknown_only:
        logger.warning("text: %d utterances are made only of tokens the tokenizer does not know (emoji, another "
                       "script); their vectors carry no words (listed in the file's `unknown_only` attribute), "
                       "e.g. %s", len(unknown_only), ", ".join(unknown_only[:3]))


def check_encoder_dir(settings: dict, encoder_dir: Path | None) -> None:
    """A setting with `finetune` needs the encoder that fine-tuning made with exactly those settings."""
    if settings["finetune"] is None:
        return
    if encoder_dir is None:
        raise ValueError("this text setting has a finetune entry: run finetune_text_encoder first and pass its "
                         "output directory as context=ExtractionContext(encoder_dir=...)")
    metrics_path = Path(encoder_dir) / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} does not exist: {encoder_dir} is not a finished fine-tuning "
                                "output; re-run the fine-tuning rule")
    made_with = json.loads(metrics_path.read_text()).get("settings")
    wanted = settings_mod.training_view(settings)
    if made_with != wanted:
        from ercpipe.io.features import flat_keys

        # The view leaves some defaults out (settings_mod.training_view): show them as the defaults they are.
        defaults = {f"finetune.{k}": v for k, v in settings_mod.VIEW_LEAVES_OUT.items()}
        got, want = ({**defaults, **flat_keys(view)} for view in (made_with or {}, wanted))
        differ = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
        shown = "; ".join(f"{k} {got.get(k)!r} there, {want.get(k)!r} here" for k in differ[:3])
        raise ValueError(f"{encoder_dir} was fine-tuned with other settings ({shown}), e.g. by a job that outlived a "
                         f"killed Snakemake; delete {encoder_dir} (or run Snakemake with --forcerun "
                         "finetune_text_encoder) and run again")


def extract_shard(manifest_path, settings: dict | None, out_path, *, threads: int = 1, device: str = "auto",
                  context: ExtractionContext | None = None) -> None:
    """Encode the utterances of the manifest (a job's shard manifest) and write them to `out_path` (HDF5,
    atomically); the call shape of every extractor (ercpipe.features.interface).

    `context.encoder_dir` (a fine-tuned model directory) is loaded in place of settings["model"].
    """
    encoder_dir = (context or NO_CONTEXT).encoder_dir
    settings = stored_settings(settings, encoder_dir)
    check_encoder_dir(settings, encoder_dir)
    torch.set_num_threads(max(1, int(threads)))
    rows = manifest_io.read(manifest_path)
    encoder = TextEncoder(settings, device, encoder_dir=encoder_dir, base_dir=(context or NO_CONTEXT).base_dir)
    logger.info("text %s: %d utterances, model %s%s (%d-d), pooling %s, last %d layer(s), context %s, "
                "device %s, %d thread(s)", manifest_path, len(rows), settings["model"],
                f" fine-tuned in {encoder_dir}" if encoder_dir else "", encoder.dim,
                settings["pooling"], settings["last_layers"], settings["context"], encoder.device, threads)
    result = encoder.encode_rows(rows, desc="text")
    _log_absent(result.absent, result.truncated, result.unknown_only, len(rows))
    feature_io.write(out_path, feature_io.FeatureSet(rows["utterance_id"].tolist(), result.features, result.present, {
        "modality": "text", "extractor": "text", "model": settings["model"], "settings": settings,
        "versions": feature_io.package_versions(["torch", "transformers", "ercpipe"]),
        "computed_on": encoder.computed_on,
        "absent": json.dumps(result.absent, sort_keys=True),
        "truncated": json.dumps(result.truncated, sort_keys=True),
        "unknown_only": json.dumps(result.unknown_only),
        "encoder_dir": str(encoder_dir) if encoder_dir else "",
        # the model's files' digest (a folder) or the hub commit (a name): predict checks that it has the same model
        **model_identity(encoder.loaded_from)}))


# The encoder's names, as this module has always offered them (text.TextEncoder, text.feature_dim, ...).
__all__ = ["DEFAULT_CONTEXT", "DEFAULT_SETTINGS", "EncodedInput", "PACKAGED_MINILM", "POOLINGS", "TEXT_FLAGS",
           "TextEncoder", "TextFeatures", "check_encoder_dir", "context_settings", "extract_shard", "feature_dim",
           "load_tokenizer_and_model", "resolve_model_path", "stored_settings", "text_settings"]
