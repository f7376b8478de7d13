"""Rule utterance_audio: one 16 kHz mono WAV per utterance of a shard, plus a status report."""
from pathlib import Path

from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0], snakemake.threads):
    from ercpipe.datasets.media_prep import write_utterance_audio

    write_utterance_audio(snakemake.input.manifest, int(snakemake.wildcards.shard), snakemake.params.n_shards,
                          Path(snakemake.output.wavs), threads=snakemake.threads)
