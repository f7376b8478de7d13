"""A selection's `search:` block -> the text settings and experiments it compares (expanded at parse time).

A search names the settings that differ between datasets and lets the selection choose them on dev:

    selections:
      text_recipe:
        search:
          text: {model: "packaged:minilm", pooling: mean, max_length: 64, finetune: {epochs: 3, lr: 1.0e-4}}
          finetune_seeds: [0, 1, 2]             # one fine-tuned encoder per seed
          contexts: {plain: {}, speakers: {previous: 2, next: 1, speaker_names: true, mark_target: true}}
          class_weights: [none, train, paper]   # the SDT loss: none / inverse train frequency / official
          experiment: {preset: sdt-vega-backbone, seeds: [0, 1, 2, 3, 4]}
        ensemble: 3

Every combination (contexts x fine-tuning seeds x class weights) becomes one candidate experiment
`{selection}_{context}_ft{seed}_{weights}` on the text setting `{selection}_{context}_ft{seed}`; the
selection then ranks them as it ranks any candidates (ercpipe.train.selection). By default the class
weights are the SDT loss's only and the candidates of one encoder share it; `finetune_class_weights: same`
also weights the fine-tuning loss the same way, so each weighted candidate gets an encoder of its own,
named like the candidate (the unweighted one keeps `{selection}_{context}_ft{seed}`): up to three times
the fine-tuning, for datasets whose rare classes the encoder must learn too. `dataset` may be left out
when the config has one dataset, so the same block runs on MELD, IEMOCAP or a CSV dataset unchanged.
`paper` weights exist only for IEMOCAP's and MELD's class lists; on other classes that candidate is left
out and the reason is kept in the selection (`skipped`), which its summary reports.

The expansion writes plain `features.text` and `experiments` entries, so everything downstream (feature
checks, re-runs after a changed setting, the report) treats them like hand-written ones. It imports
nothing heavy.
"""
from __future__ import annotations

import copy
import itertools
from typing import Callable, NamedTuple

from ercpipe.errors import ErcpipeError
from ercpipe.labels import IEMOCAP_CLASSES, MELD_CLASSES, official_class_list

MAX_CANDIDATES = 24  # a handful of settings that differ between datasets, not a grid search
SEARCH_CLASS_WEIGHTS = ("none", "train", "paper")
FINETUNE_CLASS_WEIGHTS = ("none", "same")  # the fine-tuning loss: unweighted, or weighted as the candidate's SDT loss


class SearchError(ErcpipeError, ValueError):
    """A search block cannot be expanded; the message names the key."""


class Candidate(NamedTuple):
    experiment: str
    text_setting: str | None  # None when the search has no text setting of its own
    context: str
    finetune_seed: int | None
    class_weights: str
    finetune_class_weights: str | None  # the weighting of its encoder's own fine-tuning; None = unweighted


# Where `paper` weights exist: the same classes in another order have none (their vector is by label id).
OFFICIAL_ORDERS = (f"IEMOCAP's and MELD's classes in their label-id order (IEMOCAP: {', '.join(IEMOCAP_CLASSES)}; "
                   f"MELD: {', '.join(MELD_CLASSES)}; any spelling of each name)")


def candidates(selection: str, search: dict) -> list[Candidate]:
    """Every candidate of a search, contexts outermost, class weights innermost (a dev tie goes to the first)."""
    contexts = list(search.get("contexts") or {"plain": {}})
    seeds = search.get("finetune_seeds") or [None]
    weights = search.get("class_weights") or ["none"]
    own_encoder = search.get("finetune_class_weights", "none") == "same"
    rows = []
    for context, seed, weight in itertools.product(contexts, seeds, weights):
        base = f"{selection}_{context}" + ("" if seed is None else f"_ft{seed}")
        # The unweighted encoder keeps its name under `same`, so switching it on re-uses the encoders made
        # without it and only fine-tunes the weighted ones.
        own = own_encoder and weight != "none"
        setting = None if search.get("text") is None else f"{base}_{weight}" if own else base
        rows.append(Candidate(f"{base}_{weight}", setting, context, seed, weight, weight if own else None))
    return rows


def _only_dataset(config: dict, where: str) -> str:
    datasets = list(config.get("datasets", {}))
    if len(datasets) != 1:
        raise SearchError(f"{where}.dataset: the config has {len(datasets)} datasets {datasets}; name the one "
                          "this search runs on")
    return datasets[0]


def expand_searches(config: dict, classes_of: Callable[[str], list[str]]) -> dict[str, dict]:
    """Add every search's text settings and experiments to `config` and fill its selection's `candidates`.

    `classes_of(dataset_name)` gives the dataset's class list (to tell whether official weights exist).
    A name the config already uses, or a search of more than MAX_CANDIDATES candidates, is a SearchError.
    Returns, per generated text setting, the search keys it was made from ({"text": dotted path, "context":
    dotted path, "context_keys": [...]}), so that a message about it can name what the user wrote.
    """
    generated_from: dict[str, dict] = {}
    text_settings = config.setdefault("features", {}).setdefault("text", {})
    experiments = config.setdefault("experiments", {})
    for name, selection in config.get("selections", {}).items():
        search = selection.get("search")
        where = f"selections.{name}.search"
        if search is None:
            continue
        if "candidates" in selection:
            raise SearchError(f"selections.{name}: give either candidates or search, not both")
        dataset = search.get("dataset") or _only_dataset(config, where)
        if dataset not in config.get("datasets", {}):
            raise SearchError(f"{where}.dataset: unknown dataset {dataset!r}; known: {sorted(config['datasets'])}")
        text = search.get("text")
        if search.get("finetune_seeds") and not (text and text.get("finetune")):
            raise SearchError(f"{where}.finetune_seeds: only a fine-tuned text setting has a fine-tuning seed; give "
                              "text.finetune or leave finetune_seeds out")
        fractional = [seed for seed in search.get("finetune_seeds") or [] if not isinstance(seed, int)]
        if fractional:  # JSON Schema's integer takes 0.0; it would reach the generated finetune.seed
            raise SearchError(f"{where}.finetune_seeds: {fractional[0]!r} is not a whole number; write 0, 1, ... "
                              "(each names a fine-tuned encoder's folder)")
        finetune_weighting = search.get("finetune_class_weights", "none")
        if finetune_weighting not in FINETUNE_CLASS_WEIGHTS:
            raise SearchError(f"{where}.finetune_class_weights: one of {list(FINETUNE_CLASS_WEIGHTS)}, got "
                              f"{finetune_weighting!r}")
        if finetune_weighting == "same" and not (text and text.get("finetune")):
            raise SearchError(f"{where}.finetune_class_weights: only a fine-tuned text setting has a fine-tuning "
                              "loss; give text.finetune or leave finetune_class_weights out")
        if search.get("contexts") and text is None:
            raise SearchError(f"{where}.contexts: a context is part of a text setting; give text")
        template = search["experiment"]
        if "dataset" in template:  # it was overwritten without a word
            raise SearchError(f"{where}.experiment.dataset: the search trains on {where}.dataset; leave it out of the "
                              "experiment")
        if "class_weights" in (template.get("loss") or {}):
            raise SearchError(f"{where}.experiment.loss.class_weights: the search sets each candidate's class "
                              f"weighting ({where}.class_weights); leave it out of the experiment")
        if text is not None and "text" in template.get("features", {}):
            raise SearchError(f"{where}.experiment.features.text: the search makes the text settings; leave it out")
        if text is None and not template.get("features"):
            raise SearchError(f"{where}.experiment.features: without text, name the feature settings to train on")
        weights = list(search.get("class_weights") or ["none"])
        skipped = []
        if "paper" in weights and official_class_list(classes_of(dataset)) is None:
            weights.remove("paper")
            skipped.append({"class_weights": "paper", "reason": f"dataset {dataset} has classes "
                            f"{list(classes_of(dataset))}; official weights exist only for {OFFICIAL_ORDERS}"})
            if not weights:  # an empty list would search `none`, which the user did not ask for
                raise SearchError(f"{where}.class_weights: 'paper' (the official weights) exists only for "
                                  f"{OFFICIAL_ORDERS}, and dataset {dataset} has {list(classes_of(dataset))}; give "
                                  "none or train")
        rows = candidates(name, {**search, "class_weights": weights})
        if len(rows) > MAX_CANDIDATES:
            raise SearchError(f"{where}: {len(rows)} candidates; a search compares at most {MAX_CANDIDATES} (each "
                              "trains every seed): drop values from contexts, finetune_seeds or class_weights")
        if len(rows) < 2:
            raise SearchError(f"{where}: only one candidate ({rows[0].experiment}); give at least two values")
        contexts = search.get("contexts") or {"plain": {}}
        made: set[str] = set()
        for row in rows:
            if row.text_setting is not None and row.text_setting not in made:
                if row.text_setting in text_settings:
                    raise SearchError(f"{where}: features.text.{row.text_setting} already exists; rename the "
                                      "selection or that setting")
                text_settings[row.text_setting] = _text_setting(text, contexts[row.context], row.finetune_seed,
                                                                row.finetune_class_weights)
                made.add(row.text_setting)
                # Where the user wrote what this setting is made of, for messages about it (config.check).
                generated_from[row.text_setting] = {"text": f"{where}.text", "context": f"{where}.contexts.{row.context}",
                                                    "context_keys": sorted(contexts[row.context] or {})}
            if row.experiment in experiments:
                raise SearchError(f"{where}: experiments.{row.experiment} already exists; rename the selection or "
                                  "that experiment")
            entry = copy.deepcopy(template)
            entry["dataset"] = dataset
            if row.text_setting is not None:
                entry["features"] = {**entry.get("features", {}), "text": row.text_setting}
            entry.setdefault("anchors", None)
            entry["loss"] = {**entry.get("loss", {}), "class_weights": row.class_weights}
            experiments[row.experiment] = entry
        selection["candidates"] = [row.experiment for row in rows]
        selection["skipped"] = skipped
    if not text_settings:
        del config["features"]["text"]
    return generated_from


def _text_setting(text: dict, context: dict, seed: int | None, finetune_weights: str | None) -> dict:
    setting = copy.deepcopy(text)
    if context:
        setting["context"] = {**setting.get("context", {}), **context}
    extra = {} if seed is None else {"seed": seed}
    if finetune_weights is not None:
        extra["class_weights"] = finetune_weights
    if extra:
        finetune = setting["finetune"] if isinstance(setting["finetune"], dict) else {}
        setting["finetune"] = {**finetune, **extra}
    return setting
