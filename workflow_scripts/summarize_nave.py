"""Rule summarize_nave: per-image selections -> tables/nave_object_extraction.csv and tables/nave_watermark.csv.

Object extraction (the NAVE paper's Tables 1-3): AP@50 is the share of images with a ground-truth
object box whose selected segment box has IoU above the threshold with it (the Correct Localization
metric). Watermark (Sec. 4.5.3): on images carrying the planted watermark, the share whose selected
segment box has IoU of at least the threshold with the watermark box, i.e. some segment covers it.
"""

import pandas as pd

from _common import setup
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p = sm.params
KEYS = ["model", "weights", "train_dataset", "dataset", "layers", "method", "clustering", "k"]
extraction, watermark = [], []
for path, meta in zip(sm.input.boxes, p.runs):
    boxes = pd.read_csv(path)
    for (target, strategy), part in boxes.groupby(["target", "strategy"]):
        row = {**{key: meta[key] for key in KEYS}, "strategy": strategy, "n_images": len(part), "mean_iou": part.iou.mean()}
        if target == "object":
            extraction.append({**row, "ap50": (part.iou > p.iou_threshold).mean()})
        elif target == "watermark":
            watermark.append({**row, "covered_rate": (part.iou >= p.iou_threshold).mean()})
columns = KEYS + ["strategy", "n_images", "mean_iou"]
extraction = pd.DataFrame(extraction, columns=columns + ["ap50"])
watermark = pd.DataFrame(watermark, columns=columns + ["covered_rate"])
for name, table in (("object extraction", extraction), ("watermark", watermark)):
    for row in table.itertuples(index=False):
        value = row.ap50 if name == "object extraction" else row.covered_rate
        log.info("%s: %s %s %s %s K=%s %s: %.3f (%d images)", name, row.model, row.dataset, row.layers, row.method, row.k, row.strategy, value, row.n_images)
for table, path in ((extraction, sm.output.extraction), (watermark, sm.output.watermark)):
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
