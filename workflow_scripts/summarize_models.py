"""Rule summarize_models: tables/models.csv, accuracy and shortcut rate per model x dataset x split."""

import pandas as pd

from _common import setup
from conceptscope.evaluation import summarize_predictions
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
rows = []
for pair, path in zip(sm.params.pairs, sm.input.predictions):
    shortcut_class = sm.params.shortcut_classes[pair["dataset"]]
    summary = summarize_predictions(pd.read_parquet(path), shortcut_class)
    summary.insert(0, "model", pair["model"])
    summary.insert(1, "train_dataset", pair["train_dataset"])
    summary.insert(2, "dataset", pair["dataset"])
    rows.append(summary)
table = pd.concat(rows, ignore_index=True)
log.info("\n%s", table.to_string())
with atomic_path(sm.output[0]) as tmp:
    table.to_csv(tmp, index=False, float_format="%.4f")
