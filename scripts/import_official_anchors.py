"""Rule import_official_anchors: an official 35_anchor.pt as an ercpipe anchor file."""
from ercpipe.runlog import rule_logging

with rule_logging(snakemake.log[0]):
    from ercpipe.anchors import import_official

    import_official(snakemake.input.official, snakemake.output.anchors, list(snakemake.params.classes),
                    snakemake.params.clip["model"], allow_pickle=bool(snakemake.params.allow_pickle),
                    how_to_allow=f"set anchors.{snakemake.wildcards.anchor_set}.allow_pickle: true",
                    clip_name=snakemake.wildcards.clip, pretrained=snakemake.params.clip.get("pretrained", "openai"))
