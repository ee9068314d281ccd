"""Rule prepare_dataset: one `datasets.<name>` entry -> data/<name>/ (manifest, meta, images)."""

from _common import setup
from conceptscope.data import prepare_dataset

log = setup(snakemake)  # noqa: F821 (injected by Snakemake)
out = prepare_dataset(snakemake.params.spec, snakemake.output[0], name=snakemake.wildcards.dataset)  # noqa: F821
log.info("prepared %s", out)
