"""Rule summarize_nave: per-image selections -> tables/nave_object_extraction.csv, tables/nave_watermark.csv
and tables/nave_registers.csv.

Object extraction (the NAVE paper's Tables 1-3): AP@50 is the share of images with a ground-truth
object box whose selected segment box has IoU above the threshold with it (the Correct Localization
metric); `ap50_small_objects` is the same over the images whose box covers less than
`small_object_share` of the input frame (where one big segment cannot match the box by its size). Watermark (Sec. 4.5.3): on images carrying the planted watermark, the share whose selected
segment box has IoU of at least the threshold with the watermark box, i.e. some segment covers it.
Registers (Table 3's question): the object-extraction rows of transformers that have a twin differing
only in its number of register tokens, with a `registers` column (empty without such twins).
"""

import json
from functools import cache
from pathlib import Path

import pandas as pd

from _common import frame_targets, setup
from conceptscope.data import PreparedDataset
from conceptscope.models import frame_size
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p = sm.params
KEYS = ["model", "weights", "train_dataset", "dataset", "layers", "method", "clustering", "k"]


@cache
def object_share(dataset: str, model: str) -> pd.Series:
    """Share of the model's input frame that each image's object box covers, by image id."""
    data = PreparedDataset(Path(sm.input.data[p.datasets.index(dataset)]))
    preprocess = json.loads(Path(sm.input.info[p.models.index(model)]).read_text())["preprocess"]
    shares = {}
    for row in data.manifest.itertuples(index=False):
        x0, y0, x1, y1 = frame_targets(row, preprocess)["object"][0]
        height, width = frame_size(row.width, row.height, preprocess)
        shares[row.image_id] = (x1 - x0) * (y1 - y0) / (height * width)
    return pd.Series(shares)


extraction, watermark = [], []
for path, meta in zip(sm.input.boxes, p.runs):
    boxes = pd.read_csv(path)
    for (target, strategy), part in boxes.groupby(["target", "strategy"]):
        row = {**{key: meta[key] for key in KEYS}, "strategy": strategy, "n_images": len(part), "mean_iou": part.iou.mean()}
        if target == "object":
            # objects filling most of the frame are found by any large segment: also score the smaller ones alone
            small = part[part.image_id.map(object_share(meta["dataset"], meta["model"])).to_numpy() < p.small_object_share]
            extraction.append({**row, "ap50": (part.iou > p.iou_threshold).mean(),
                               "n_small_objects": len(small), "ap50_small_objects": (small.iou > p.iou_threshold).mean() if len(small) else float("nan")})
        elif target == "watermark":
            watermark.append({**row, "covered_rate": (part.iou >= p.iou_threshold).mean()})
columns = KEYS + ["strategy", "n_images", "mean_iou"]
extraction = pd.DataFrame(extraction, columns=columns + ["ap50", "n_small_objects", "ap50_small_objects"])
watermark = pd.DataFrame(watermark, columns=columns + ["covered_rate"])
for name, table in (("object extraction", extraction), ("watermark", watermark)):
    for row in table.itertuples(index=False):
        value = row.ap50 if name == "object extraction" else row.covered_rate
        log.info("%s: %s %s %s %s K=%s %s: %.3f (%d images)", name, row.model, row.dataset, row.layers, row.method, row.k, row.strategy, value, row.n_images)


def register_twins() -> dict[str, int]:
    """Model -> its register count, for models that have a twin differing only in the number of
    register tokens (same architecture and other arch_options, training data and settings)."""
    groups: dict[str, dict[str, int]] = {}
    for model, path in zip(p.models, sm.input.info):
        info = json.loads(Path(path).read_text())
        options = dict(info.get("arch_options") or {})
        registers = int(options.pop("registers", 0))
        twin_key = json.dumps([info["arch"], options, info.get("train_dataset"), info.get("train"), info.get("weights")], sort_keys=True)
        groups.setdefault(twin_key, {})[model] = registers
    return {m: r for group in groups.values() if len(set(group.values())) > 1 for m, r in group.items()}


# NAVE paper Table 3's question: the same ViT with and without register tokens, side by side
twins = register_twins()
registers = extraction[extraction.model.isin(list(twins))].copy()
registers.insert(1, "registers", registers.model.map(twins).astype(int))
registers = registers.sort_values(["dataset", "method", "k", "strategy", "registers"], kind="stable")
for row in registers.itertuples(index=False):
    log.info("registers: %s (%d registers) %s %s K=%s %s: AP@50 %.3f", row.model, row.registers, row.dataset, row.layers, row.k, row.strategy, row.ap50)
for table, path in ((extraction, sm.output.extraction), (watermark, sm.output.watermark), (registers, sm.output.registers)):
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
