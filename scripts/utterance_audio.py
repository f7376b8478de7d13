"""Rule utterance_audio: one 16 kHz mono WAV per utterance of a shard, plus a status report."""
from pathlib import Path

from ercpipe.runlog import rule_logging

# snakemake.input.manifest is this shard's own manifest (rule build_manifest_shard): all of it is shard 0 of 1.
with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.datasets.media_prep import write_utterance_audio

    write_utterance_audio(snakemake.input.manifest, 0, 1,
                          Path(snakemake.output.wavs), threads=snakemake.threads)
