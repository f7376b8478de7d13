"""Rule visual_features_shard: frames -> MTCNN speaker face -> DenseNet, mean-pooled per utterance."""
from ercpipe.features import ExtractionContext, extract_shard
from ercpipe.runlog import rule_logging

# snakemake.input.manifest is this shard's own manifest (rule build_manifest_shard).
with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.device import job_device

    extract_shard("visual", snakemake.input.manifest, snakemake.params.settings, snakemake.output.shard,
                  threads=snakemake.threads, device=job_device(snakemake.config),
                  context=ExtractionContext(face_selection=snakemake.params.face_selection))
