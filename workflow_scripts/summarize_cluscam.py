"""Rule summarize_cluscam: per-job saliency results -> tables/cluscam_faithfulness.csv, cluscam_watermark.csv,
cluscam_object_size.csv, cluscam_sweep.csv.

Every row carries model, dataset, layer (and method); metrics are means over images with their
standard errors (`*_sem`).
- faithfulness: subset `main` for the methods run on cluscam.max_images images; subset `costly` for
  every method on the costly methods' images (nested in the main ones), so the costly baselines are
  compared on the same images as the others. Lower deletion AUC, higher insertion AUC, lower
  average drop and higher increase in confidence are better; seconds_per_image is the map alone.
- watermark: on watermarked test images, the share of saliency inside the watermark box beside the
  box's share of the frame (what a uniform map gives) and their ratio.
- object_size: by object box area / frame area (cluscam.object_size_bins), for datasets with boxes.
- sweep: ClusCAM's metrics per K and temperature.
"""

import numpy as np
import pandas as pd

from _common import read_job_tables, setup
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p = sm.params
METRICS = ["deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence"]


def summary(frame: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Per group: images, the mean and standard error of each column."""
    grouped = frame.groupby(by, sort=False, dropna=False)
    out = grouped.size().rename("images").to_frame()
    for column in columns:
        out[column] = grouped[column].mean()
        out[f"{column}_sem"] = grouped[column].std(ddof=1) / np.sqrt(grouped[column].count())
    return out.reset_index()


keys = ["model", "dataset", "layer", "method"]
per_image = read_job_tables(sm.input.per_image, p.jobs)
parts = []
costly = per_image[per_image.method.isin(p.costly_methods)]
main = per_image[~per_image.method.isin(p.costly_methods)]
if len(main):
    parts.append(summary(main, keys, METRICS + ["seconds"]).assign(subset="main"))
if len(costly):
    shared = costly.groupby(keys[:3])["image_id"].agg(lambda ids: set(ids))
    in_costly = per_image.apply(lambda row: row.image_id in shared.get((row.model, row.dataset, row.layer), set()), axis=1)
    parts.append(summary(per_image[in_costly], keys, METRICS + ["seconds"]).assign(subset="costly"))
faithfulness = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=keys)
faithfulness = faithfulness.rename(columns={"seconds": "seconds_per_image", "seconds_sem": "seconds_per_image_sem"})
front = keys + ["subset", "images"] + METRICS
faithfulness = faithfulness[front + [c for c in faithfulness.columns if c not in front]]

watermark = read_job_tables(sm.input.watermark, p.jobs).dropna(subset=["mass_in_box"]) if p.jobs else pd.DataFrame()
if len(watermark):
    watermark = summary(watermark, keys, ["mass_in_box", "box_fraction"])
    watermark["ratio"] = watermark["mass_in_box"] / watermark["box_fraction"]
else:
    watermark = pd.DataFrame(columns=keys + ["images", "mass_in_box", "box_fraction", "ratio"])

boxed = per_image.dropna(subset=["object_fraction"]) if len(per_image) else per_image
if len(boxed):
    edges = [0.0, *p.object_size_bins, np.inf]
    names = [f"<{edges[1]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(edges[1:-2], edges[2:-1])] + [f">={edges[-2]:g}"]
    boxed = boxed.assign(size_bin=pd.cut(boxed["object_fraction"], edges, right=False, labels=names).astype(str))
    object_size = summary(boxed, keys + ["size_bin"], METRICS + ["mass_in_object", "object_fraction"])
else:
    object_size = pd.DataFrame(columns=keys + ["size_bin", "images"] + METRICS + ["mass_in_object", "object_fraction"])

sweep = read_job_tables(sm.input.sweep, p.sweep_jobs)
if len(sweep):
    sweep = summary(sweep, keys[:3] + ["n_clusters", "temperature"], METRICS + ["seconds"])
else:
    sweep = pd.DataFrame(columns=keys[:3] + ["n_clusters", "temperature", "images"] + METRICS)

for key, table in (("faithfulness", faithfulness), ("watermark", watermark), ("object_size", object_size), ("sweep", sweep)):
    with atomic_path(sm.output[key]) as tmp:
        table.to_csv(tmp, index=False)
    log.info("%s: %d rows", key, len(table))
