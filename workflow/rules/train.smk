# Training (one job per experiment and seed), then the per-experiment aggregate over seeds.


rule train_model:
    input:
        unpack(train_inputs),
    output:
        metrics="results/{dataset}/{experiment}/seed{seed}/metrics.json",
        checkpoint="results/{dataset}/{experiment}/seed{seed}/model.pt",
        history="results/{dataset}/{experiment}/seed{seed}/history.tsv",
        predictions="results/{dataset}/{experiment}/seed{seed}/predictions.tsv",
        fused="results/{dataset}/{experiment}/seed{seed}/fused.npz",
    params:
        experiment=experiment_params,
        # What every feature file must have been made with (checked before training, named if not).
        feature_settings=lambda wc: canonical(
            {m: feature_setting_params(m, s, wc.dataset) for m, s in experiment_features(wc.experiment).items()}
        ),
        face_selection=lambda wc: (
            canonical(pipeline_config.face_selection(DATASETS[wc.dataset]))
            if "visual" in experiment_features(wc.experiment)
            else None
        ),
        classes=lambda wc: dataset_class_list(wc.dataset),
    log:
        "logs/train_model/{dataset}/{experiment}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_model/{dataset}/{experiment}/seed{seed}.tsv"
    threads: 2
    resources:
        mem_mb=per_attempt(8000),
        # Not per attempt: a timed-out training resumes from its saved state, so a retry needs no more time, and
        # twice a long limit (24 h) is past many partitions' MaxTime: sbatch refused the retry.
        runtime=600,
        gpu=GPU,
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/train_model.py"


rule aggregate_experiment:
    input:
        unpack(aggregate_inputs),
    output:
        summary="results/{dataset}/{experiment}/summary.json",
        table="results/{dataset}/{experiment}/summary.tsv",
        table_html=report(
            "results/{dataset}/{experiment}/summary.html",
            caption="../report/summary.rst",
            category="Results",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "figure": "metrics (mean ± std over seeds)"},
        ),
        curves=report(
            "results/{dataset}/{experiment}/curves.png",
            caption="../report/curves.rst",
            category="Results",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "figure": "training curves"},
        ),
        confusion=report(
            "results/{dataset}/{experiment}/confusion.png",
            caption="../report/confusion.rst",
            category="Results",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "figure": "confusion matrix (test)"},
        ),
        tsne=report(
            "results/{dataset}/{experiment}/tsne.png",
            caption="../report/tsne.rst",
            category="Results",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "figure": "t-SNE of fused representations"},
        ),
    params:
        experiment=experiment_params,
    log:
        "logs/aggregate_experiment/{dataset}/{experiment}.log",
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(20),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/aggregate_experiment.py"


# Choosing on dev: the candidates' summaries in, the winner's summary (and the ranking) out. Test scores
# are in those summaries but never used to choose (ercpipe.train.selection).
rule select_experiment:
    input:
        unpack(selection_inputs),
    output:
        ranking="results/{dataset}/{selection}/selection.tsv",
        summary="results/{dataset}/{selection}/summary.json",
        table="results/{dataset}/{selection}/summary.tsv",
        predictions=directory("results/{dataset}/{selection}/predictions"),
        table_html=report(
            "results/{dataset}/{selection}/summary.html",
            caption="../report/selection.rst",
            category="Results",
            subcategory="{selection}",
            labels={"selection": "{selection}", "figure": "candidates ranked on dev, then the chosen one's metrics"},
        ),
    params:
        candidates=lambda wc: SELECTIONS[wc.selection]["candidates"],
        metric=lambda wc: SELECTIONS[wc.selection].get("metric", "valid.weighted_f1"),
        ensemble=lambda wc: SELECTIONS[wc.selection].get("ensemble"),
        skipped=lambda wc: SELECTIONS[wc.selection].get("skipped", []),
        # The version of what ercpipe.train.selection writes: a new value re-makes every selection once (seconds),
        # so that one made by an older ercpipe gets what it lacks (2: the ensemble members' runs, which predict
        # checks, and the official class weights' note).
        record=2,
    log:
        "logs/select_experiment/{dataset}/{selection}.log",
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(5),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/select_experiment.py"
