# Feature extraction: one rule per extractor, each sharded by dialogue chunks, then merged.
# `params: settings` carries only that extractor's setting, so changing e.g. the text model re-runs
# the text rules and what depends on them, and nothing else. A shard job reads its shard's rows as its
# modality sees them (rule modality_manifest_shard), so a fix in the raw data re-runs only the shards it
# touches, and there only the modalities whose inputs changed.


# The rows fine-tuning reads (train and valid), read from the raw data by a job of their own that re-runs on
# their digest only, so a fixed test label (or a media fix) re-runs no fine-tuning and no text extraction.
rule finetune_manifest:
    wildcard_constraints:
        dataset=one_of(RAW_DATASETS, "NO_RAW_DATASET"),
    input:
        shard_raw_input,
    output:
        manifest="features/{dataset}/finetune_rows.tsv",
    params:
        rows=finetune_rows_digest,
    log:
        "logs/finetune_manifest/{dataset}.log",
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(20),
    conda:
        "../../envs/base.yaml"
    script:
        "../../scripts/finetune_manifest.py"


rule finetune_text_encoder:
    input:
        manifest="features/{dataset}/finetune_rows.tsv",
    output:
        encoder=directory("features/{dataset}/text_encoders/{setting}"),
    params:
        # what the encoder depends on, without the extraction-only keys (last_layers, batch_size, ...)
        settings=lambda wc: canonical(training_view(FEATURES["text"][wc.setting])),
        model_files=lambda wc: local_model_files(FEATURES["text"][wc.setting].get("model")),
        classes=lambda wc: dataset_class_list(wc.dataset),
    log:
        "logs/finetune_text_encoder/{dataset}/{setting}.log",
    benchmark:
        "results/benchmarks/finetune_text_encoder/{dataset}/{setting}.tsv"
    threads: 2
    resources:
        mem_mb=per_attempt(8000),
        runtime=per_attempt(240),
        gpu=GPU,
    conda:
        "../../envs/text.yaml"
    script:
        "../../scripts/finetune_text_encoder.py"


rule text_features_shard:
    input:
        unpack(text_encoder_input),
        manifest="features/{dataset}/manifest_shards/text/shard{shard}.tsv",
    output:
        shard="features/{dataset}/text/{setting}/shard{shard}.h5",
    params:
        settings=lambda wc: feature_setting_params("text", wc.setting),
        model_files=lambda wc: local_model_files(FEATURES["text"][wc.setting].get("model")),
    log:
        "logs/text_features/{dataset}/{setting}/shard{shard}.log",
    benchmark:
        "results/benchmarks/text_features/{dataset}/{setting}/shard{shard}.tsv"
    threads: 2
    resources:
        mem_mb=shard_resource("text", "mem_mb"),
        runtime=shard_resource("text", "runtime"),
        gpu=GPU,
    conda:
        "../../envs/text.yaml"
    script:
        "../../scripts/text_features.py"


rule audio_features_shard:
    input:
        manifest="features/{dataset}/manifest_shards/audio/shard{shard}.tsv",
        wavs="features/{dataset}/media/audio/shard{shard}",
    output:
        shard="features/{dataset}/audio/{setting}/shard{shard}.h5",
    params:
        settings=lambda wc: feature_setting_params("audio", wc.setting),
    log:
        "logs/audio_features/{dataset}/{setting}/shard{shard}.log",
    benchmark:
        "results/benchmarks/audio_features/{dataset}/{setting}/shard{shard}.tsv"
    threads: 2
    resources:
        mem_mb=shard_resource("audio", "mem_mb"),
        runtime=shard_resource("audio", "runtime"),
    conda:
        "../../envs/audio.yaml"
    script:
        "../../scripts/audio_features.py"


rule visual_features_shard:
    input:
        manifest="features/{dataset}/manifest_shards/visual/shard{shard}.tsv",
    output:
        shard="features/{dataset}/visual/{setting}/shard{shard}.h5",
    params:
        settings=lambda wc: feature_setting_params("visual", wc.setting),
        model_files=lambda wc: local_model_files(FEATURES["visual"][wc.setting].get("weights")),
        face_selection=lambda wc: canonical(pipeline_config.face_selection(DATASETS[wc.dataset])),
    log:
        "logs/visual_features/{dataset}/{setting}/shard{shard}.log",
    benchmark:
        "results/benchmarks/visual_features/{dataset}/{setting}/shard{shard}.tsv"
    threads: 2
    resources:
        mem_mb=shard_resource("visual", "mem_mb"),
        runtime=shard_resource("visual", "runtime"),
        gpu=GPU,
    conda:
        "../../envs/vision.yaml"
    script:
        "../../scripts/visual_features.py"


rule merge_features:
    input:
        manifest="features/{dataset}/manifest.tsv",
        shards=lambda wc: expand(
            "features/{{dataset}}/{{modality}}/{{setting}}/shard{shard}.h5",
            shard=range(n_shards(wc.dataset)),
        ),
    output:
        features="features/{dataset}/{modality}/{setting}.h5",
    log:
        "logs/merge_features/{dataset}/{modality}/{setting}.log",
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(20),
    conda:
        "../../envs/base.yaml"
    script:
        "../../scripts/merge_features.py"
