"""A selection's search: the candidates it makes, what it leaves out, its refusals, and the ready text configs."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from ercpipe import config as pipeline_config
from ercpipe.search import MAX_CANDIDATES
from workflow_run import planned_jobs, snakemake, write_config

REPO = Path(__file__).resolve().parents[1]
TEXT_CONFIGS = ("meld_text.yaml", "iemocap_text.yaml", "csv_text.yaml")
CSV_CLASSES = ["joyful", "mad", "neutral", "peaceful", "powerful", "sad", "scared"]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "workflow" / "configs" / name).read_text())


def test_the_ready_text_configs_share_one_recipe_block():
    blocks = [load(name)["selections"] for name in TEXT_CONFIGS]
    assert blocks[0] == blocks[1] == blocks[2]
    assert all(set(load(name)) == {"datasets", "selections"} for name in TEXT_CONFIGS)


def test_a_search_makes_one_experiment_per_context_seed_and_weighting(tmp_path):
    config = load("meld_text.yaml")
    pipeline_config.expand_searches(config)
    selection = config["selections"]["text_recipe"]
    assert len(selection["candidates"]) == 2 * 3 * 3 and selection["skipped"] == []
    assert selection["candidates"][:3] == ["text_recipe_plain_ft0_none", "text_recipe_plain_ft0_train",
                                           "text_recipe_plain_ft0_paper"]
    # One text setting per context and fine-tuning seed, shared by its three weightings.
    text = config["features"]["text"]
    assert sorted(text) == sorted(f"text_recipe_{c}_ft{s}" for c in ("plain", "speakers") for s in (0, 1, 2))
    assert text["text_recipe_speakers_ft2"]["context"] == {"previous": 2, "next": 1, "speaker_names": True,
                                                           "mark_target": True}
    assert text["text_recipe_speakers_ft2"]["finetune"] == {"epochs": 3, "lr": 1.0e-4, "batch_size": 32, "seed": 2}
    assert "context" not in text["text_recipe_plain_ft0"]
    experiment = config["experiments"]["text_recipe_speakers_ft1_paper"]
    assert experiment["dataset"] == "meld_text" and experiment["features"] == {"text": "text_recipe_speakers_ft1"}
    assert experiment["loss"] == {"class_weights": "paper"} and experiment["anchors"] is None
    assert experiment["seeds"] == [0, 1, 2, 3, 4] and experiment["model"] == {"hidden_dim": 256}
    (tmp_path / "raw" / "MELD.Raw").mkdir(parents=True)
    pipeline_config.check(config, tmp_path)  # what the search made passes the same checks as written experiments


def test_official_weights_are_left_out_where_the_classes_have_none_and_the_reason_kept():
    config = load("csv_text.yaml")
    pipeline_config.expand_searches(config)
    selection = config["selections"]["text_recipe"]
    assert len(selection["candidates"]) == 2 * 3 * 2
    assert not any(c.endswith("_paper") for c in selection["candidates"])
    assert selection["skipped"][0]["class_weights"] == "paper"
    assert "official weights exist only for IEMOCAP's and MELD's" in selection["skipped"][0]["reason"]
    # MELD's classes in another order have none either: the note says the order counts (it read as if MELD's
    # classes had no weights).
    config = load("csv_text.yaml")
    config["datasets"]["mydata"]["classes"] = sorted(["neutral", "surprise", "fear", "sadness", "joy", "disgust",
                                                      "anger"])
    pipeline_config.expand_searches(config)
    assert ("MELD's classes in their label-id order (IEMOCAP: hap, sad, neu, ang, exc, fru; MELD: neutral, surprise, "
            "fear, sadness, joy, disgust, anger; any spelling of each name)") in (
        config["selections"]["text_recipe"]["skipped"][0]["reason"])
    config = load("iemocap_text.yaml")
    pipeline_config.expand_searches(config)
    assert len(config["selections"]["text_recipe"]["candidates"]) == 18
    # Only `paper` asked for, where it does not exist: an error, not a silent search of unweighted candidates.
    config = load("csv_text.yaml")
    config["selections"]["text_recipe"]["search"]["class_weights"] = ["paper"]
    with pytest.raises(pipeline_config.ConfigError, match=r"^selections.text_recipe.search.class_weights: 'paper' "
                                                          r"\(the official weights\) exists only for IEMOCAP's"):
        pipeline_config.expand_searches(config)


def test_finetune_class_weights_same_gives_each_candidate_an_encoder_weighted_like_it(tmp_path):
    config = load("csv_text.yaml")
    search = config["selections"]["text_recipe"]["search"]
    search.update(finetune_class_weights="same", finetune_seeds=[0])
    pipeline_config.expand_searches(config)
    candidates = config["selections"]["text_recipe"]["candidates"]
    assert candidates == [f"text_recipe_{c}_ft0_{w}" for c in ("plain", "speakers") for w in ("none", "train")]
    text = config["features"]["text"]
    # The unweighted encoder keeps the name it has without the option (encoders made before are re-used);
    # paper was left out for these classes, so there is no encoder for it.
    assert sorted(text) == ["text_recipe_plain_ft0", "text_recipe_plain_ft0_train", "text_recipe_speakers_ft0",
                            "text_recipe_speakers_ft0_train"]
    for name in candidates:
        weights = name.rsplit("_", 1)[1]
        setting = name if weights == "train" else name.rsplit("_", 1)[0]
        assert text[setting]["finetune"] == {"epochs": 3, "lr": 1.0e-4, "batch_size": 32, "seed": 0,
                                             **({"class_weights": "train"} if weights == "train" else {})}
        experiment = config["experiments"][name]
        assert experiment["features"] == {"text": setting} and experiment["loss"] == {"class_weights": weights}
    (tmp_path / "raw" / "mydata").mkdir(parents=True)
    (tmp_path / "raw" / "mydata" / "manifest.csv").write_text("dialogue_id,utterance_id,split,speaker,label,text\n")
    pipeline_config.check(config, tmp_path)
    # The default leaves the fine-tuning unweighted: no class_weights key, encoders shared across weightings,
    # and the unweighted encoders are the same settings under both (so switching `same` on re-runs none of them).
    default = load("csv_text.yaml")
    default["selections"]["text_recipe"]["search"]["finetune_seeds"] = [0]
    pipeline_config.expand_searches(default)
    assert all("class_weights" not in setting["finetune"] for setting in default["features"]["text"].values())
    assert default["features"]["text"] == {name: text[name] for name in default["features"]["text"]}


@pytest.mark.parametrize("change, message", [
    (lambda s: s["search"].update(finetune_class_weights="train"), "finetune_class_weights: one of"),
    (lambda s: s["search"].update(finetune_class_weights="same", finetune_seeds=None) or s["search"]["text"].pop(
        "finetune"), "finetune_class_weights: only a fine-tuned text setting"),
    (lambda s: s.update(candidates=["a", "b"]), "give either candidates or search, not both"),
    (lambda s: s["search"].update(finetune_seeds=list(range(5)), contexts={f"c{i}": {} for i in range(3)}),
     f"45 candidates; a search compares at most {MAX_CANDIDATES}"),
    (lambda s: s["search"]["text"].pop("finetune"), "finetune_seeds: only a fine-tuned text setting"),
    # JSON Schema's integer takes 0.0: it was named as the generated setting's finetune.seed.
    (lambda s: s["search"].update(finetune_seeds=[0.0, 1]),
     r"^selections.text_recipe.search.finetune_seeds: 0.0 is not a whole number"),
    (lambda s: s["search"].update(dataset="nope"), "search.dataset: unknown dataset 'nope'"),
    (lambda s: s["search"]["experiment"].update(features={"text": "x"}), "the search makes the text settings"),
    (lambda s: s["search"].update(contexts={"plain": {}}, finetune_seeds=[0], class_weights=["none"]),
     "only one candidate"),
    # A setting the search makes is checked as the keys the user wrote, not under its generated name.
    (lambda s: s["search"]["text"].update(pooling="meen"),
     r"^selections.text_recipe.search.text.pooling: text pooling 'meen' is not one of"),
    (lambda s: s["search"]["contexts"]["speakers"].update(previus=2),
     r"^selections.text_recipe.search.contexts.speakers.previus: unknown key; did you mean previous\?"),
    (lambda s: s["search"]["text"]["finetune"].update(lr="fast"),
     r"^selections.text_recipe.search.text.finetune.lr: text fine-tuning setting lr must be a number"),
    (lambda s: s["search"]["experiment"].setdefault("loss", {}).update(class_weights="train"),
     r"^selections.text_recipe.search.experiment.loss.class_weights: the search sets each candidate's class"),
    # Overwritten without a word: the schema's description says "without dataset".
    (lambda s: s["search"]["experiment"].update(dataset="other"),
     r"^selections.text_recipe.search.experiment.dataset: the search trains on selections.text_recipe.search.dataset"),
    # The packaged model's input limit: it named features.text.text_recipe_plain_ft0.max_length, once per setting.
    (lambda s: s["search"]["text"].update(max_length=1024),
     r"^selections.text_recipe.search.text.max_length: max_length=1024 exceeds what model 'packaged:minilm' accepts"),
    (lambda s: s["search"]["text"]["finetune"].update(max_length=1024),
     r"^selections.text_recipe.search.text.finetune.max_length: finetune.max_length=1024 exceeds"),
])
def test_a_search_that_cannot_be_expanded_names_the_key(change, message):
    config = load("meld_text.yaml")
    change(config["selections"]["text_recipe"])
    with pytest.raises(pipeline_config.ConfigError, match=message):
        pipeline_config.expand_searches(config)


@pytest.mark.parametrize("change, message", [
    (lambda e: e.setdefault("train", {}).update(epoch=5), r"experiment: experiment key train.epoch: unknown key"),
    (lambda e: e.update(preset="sdt-vega-backbon"), r"experiment: experiment key preset: unknown preset"),
    (lambda e: e.setdefault("model", {}).update(modalities=["text", "audio"]),
     r"experiment: experiment key model.modalities: \['audio'\] have no feature setting"),
])
def test_a_problem_of_an_experiment_a_search_makes_names_the_search_key(tmp_path, change, message):
    """They were named by the generated experiment (experiments.text_recipe_plain_ft0_none), which the user
    never wrote."""
    config = load("meld_text.yaml")
    change(config["selections"]["text_recipe"]["search"]["experiment"])
    pipeline_config.expand_searches(config)
    (tmp_path / "raw" / "MELD.Raw").mkdir(parents=True)
    with pytest.raises(pipeline_config.ConfigError) as err:
        pipeline_config.check(config, tmp_path)
    assert re.match(r"selections\.text_recipe\.search\." + message, str(err.value)), str(err.value)
    assert str(err.value).endswith("(in text_recipe_plain_ft0_none, one of the experiments this search makes)")


def test_a_search_of_paper_compat_candidates_is_refused_before_any_job(tmp_path):
    """The selection job refused them, but only after every candidate had trained."""
    config = load("meld_text.yaml")
    config["selections"]["text_recipe"]["search"]["experiment"]["train"]["paper_compat"] = True
    pipeline_config.expand_searches(config)
    (tmp_path / "raw" / "MELD.Raw").mkdir(parents=True)
    with pytest.raises(pipeline_config.ConfigError, match=r"^selections.text_recipe.search.experiment.train."
                                                          r"paper_compat: true makes every candidate choose its "
                                                          r"epochs on the test split"):
        pipeline_config.check(config, tmp_path)


def test_a_schema_problem_of_the_experiments_a_search_makes_names_the_search_key():
    """A typo the key checks do not see (seeds written `seed`) reached Snakemake's own validation, which printed
    the whole schema and a generated experiment name the user never wrote."""
    config = load("meld_text.yaml")
    experiment = config["selections"]["text_recipe"]["search"]["experiment"]
    experiment["seed"] = experiment.pop("seeds")
    with pytest.raises(pipeline_config.ConfigError) as raised:
        pipeline_config.expand_searches(config, schema_path=REPO / "workflow" / "schemas" / "config.schema.yaml")
    assert str(raised.value).splitlines()[1:] == [
        "  selections.text_recipe.search.experiment: Additional properties are not allowed ('seed' was unexpected) "
        "(in every experiment this search makes)",
        "  selections.text_recipe.search.experiment: 'seeds' is a required property (in every experiment this search "
        "makes)"]


def test_a_search_does_not_overwrite_a_written_experiment_or_setting():
    config = load("meld_text.yaml")
    config["experiments"] = {"text_recipe_plain_ft0_none": {"dataset": "meld_text", "features": {"text": "x"}, "seeds": [0]}}
    with pytest.raises(pipeline_config.ConfigError, match="experiments.text_recipe_plain_ft0_none already exists"):
        pipeline_config.expand_searches(copy.deepcopy(config))
    config["experiments"] = {}
    config["features"] = {"text": {"text_recipe_plain_ft1": {"model": "packaged:minilm"}}}
    with pytest.raises(pipeline_config.ConfigError, match="features.text.text_recipe_plain_ft1 already exists"):
        pipeline_config.expand_searches(config)


def test_an_ensemble_needs_candidates_with_the_same_seeds(tmp_path):
    config = load("meld_text.yaml")
    pipeline_config.expand_searches(config)
    config["experiments"]["text_recipe_plain_ft0_none"]["seeds"] = [0, 1]
    (tmp_path / "raw" / "MELD.Raw").mkdir(parents=True)
    with pytest.raises(pipeline_config.ConfigError, match="selections.text_recipe.ensemble: the candidates train "
                                                          "different seeds"):
        pipeline_config.check(config, tmp_path)


def test_the_csv_template_plans_the_recipe_on_a_csv_dataset_unchanged(tmp_path):
    rows = ["dialogue_id,utterance_id,split,speaker,label,text"]
    for split, n_dialogues in (("train", 4), ("valid", 2), ("test", 2)):
        for d in range(n_dialogues):
            rows += [f"{split}{d},{split}{d}_u{u},{split},{'AB'[u % 2]},{CSV_CLASSES[(d + u) % 7]},line {u} of {d}"
                     for u in range(4)]
    (tmp_path / "raw" / "mydata").mkdir(parents=True)
    (tmp_path / "raw" / "mydata" / "manifest.csv").write_text("\n".join(rows) + "\n")
    config = load("csv_text.yaml")  # the template as shipped: its dataset block points at raw/mydata/manifest.csv
    jobs = planned_jobs(snakemake(tmp_path, write_config(tmp_path, config), "-n").stdout)
    assert jobs["finetune_text_encoder"] == 6 and jobs["aggregate_experiment"] == 12
    assert jobs["train_model"] == 12 * 5 and jobs["select_experiment"] == 1
