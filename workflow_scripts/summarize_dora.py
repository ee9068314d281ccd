"""Rule summarize_dora: per-job DORA results -> tables/dora_mantel.csv, dora_anomaly.csv, dora_outliers.csv, dora_probing.csv.

Every row carries model, dataset and layer; distances are split into `distance` (ea_n, ea_s,
minkowski, pearson, spearman) and `mode` (pairwise, layerwise; empty for the baselines).
"""

import pandas as pd

from _common import setup
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
for key in ("mantel", "anomaly", "outliers", "probing"):
    frames = []
    for job, path in zip(sm.params.jobs, sm.input[key]):
        frame = pd.read_csv(path)
        for column, value in reversed(list(job.items())):
            frame.insert(0, column, value)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    with atomic_path(sm.output[key]) as tmp:
        table.to_csv(tmp, index=False)
    log.info("%s: %d rows", key, len(table))
