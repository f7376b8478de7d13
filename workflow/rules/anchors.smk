# CLIP visual emotion anchors (VEGA): an image set per emotion, encoded by a CLIP image encoder.


rule synthetic_anchor_images:
    wildcard_constraints:
        anchor_set=one_of(SYNTHETIC_ANCHORS, "NO_SYNTHETIC_ANCHOR_SET"),
    output:
        images=directory("anchors/{anchor_set}/images"),
    params:
        settings=synthetic_anchor_settings,
        classes=lambda wc: pipeline_config.anchor_classes(config, wc.anchor_set),
    log:
        "logs/synthetic_anchor_images/{anchor_set}.log",
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(10),
    conda:
        "../../envs/base.yaml"
    script:
        "../../scripts/synthetic_anchor_images.py"


rule mine_anchor_images:
    wildcard_constraints:
        anchor_set=one_of(MINED_ANCHORS, "NO_MINED_ANCHOR_SET"),
    input:
        manifest=lambda wc: manifest_path(ANCHORS[wc.anchor_set]["mine"]["dataset"]),
        visual=lambda wc: feature_path(
            ANCHORS[wc.anchor_set]["mine"]["dataset"], "visual", ANCHORS[wc.anchor_set]["mine"]["visual"]
        ),
    output:
        images=directory("anchors/{anchor_set}/mined"),
    params:
        settings=lambda wc: canonical(mining_params(ANCHORS[wc.anchor_set]["mine"])),
        face_settings=lambda wc: feature_setting_params("visual", ANCHORS[wc.anchor_set]["mine"]["visual"]),
        face_selection=lambda wc: canonical(
            pipeline_config.face_selection(DATASETS[ANCHORS[wc.anchor_set]["mine"]["dataset"]])
        ),
        classes=lambda wc: pipeline_config.dataset_classes(DATASETS[ANCHORS[wc.anchor_set]["mine"]["dataset"]]),
    log:
        "logs/mine_anchor_images/{anchor_set}.log",
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(60),
    conda:
        "../../envs/vision.yaml"
    script:
        "../../scripts/mine_anchor_images.py"


rule encode_anchors:
    wildcard_constraints:
        anchor_set=one_of(ENCODED_ANCHORS, "NO_ENCODED_ANCHOR_SET"),  # official: sets: import_official_anchors
    input:
        images=anchor_image_dir,
    output:
        anchors="anchors/{anchor_set}/{clip}.h5",
    params:
        clip=anchor_clip_settings,
        model_files=lambda wc: local_model_files(ANCHORS[wc.anchor_set]["clip"].get("pretrained")),
        classes=lambda wc: pipeline_config.anchor_classes(config, wc.anchor_set),
        images_digest=anchor_images_digest,
    log:
        "logs/encode_anchors/{anchor_set}/{clip}.log",
    benchmark:
        "results/benchmarks/encode_anchors/{anchor_set}/{clip}.tsv"
    threads: 2
    resources:
        mem_mb=per_attempt(6000),
        runtime=per_attempt(60),
        gpu=GPU,
    conda:
        "../../envs/clip.yaml"
    script:
        "../../scripts/encode_anchors.py"
