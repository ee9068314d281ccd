"""Rule summarize_dora: per-job DORA results -> tables/dora_mantel.csv, dora_anomaly.csv, dora_outliers.csv, dora_probing.csv.

Every row carries model, dataset and layer; distances are split into `distance` (ea_n, ea_s,
minkowski, pearson, spearman) and `mode` (pairwise, layerwise; empty for the baselines).
"""

from _common import read_job_tables, setup
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
for key in ("mantel", "anomaly", "outliers", "probing"):
    table = read_job_tables(sm.input[key], sm.params.jobs)
    with atomic_path(sm.output[key]) as tmp:
        table.to_csv(tmp, index=False)
    log.info("%s: %d rows", key, len(table))
