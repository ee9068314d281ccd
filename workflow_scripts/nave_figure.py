"""Rule nave_figure: overlays of NAVE and the baselines -> figures/nave/{ds}/{model}.png (paper Figs. 1, 6).

One row per stored image (the first `n_images`): the image as the model sees it with its object box
(green) and watermark box (red), then each segmentation (NAVE per layer set, then the baselines)
with the segment selected for the object (outer strategy) outlined in yellow.
"""

import numpy as np
import pandas as pd
from PIL import Image

from _common import frame_targets, nave_inputs, setup
from conceptscope.models import build_frame_transform
from conceptscope.store import RowStore
from conceptscope.viz import overlay_segments, save_png, tile_grid

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p = sm.params
data, preprocess, _, rows = nave_inputs(sm, [p.layer], p.n_images)
to_frame = build_frame_transform(preprocess)
segmentations = [(name, RowStore(seg), pd.read_csv(boxes)) for name, seg, boxes in zip(p.names, sm.input.segments, sm.input.boxes)]
GREEN, RED, YELLOW = (0, 200, 0), (230, 0, 0), (255, 230, 0)
tiles, labels = [], []
for position, row in enumerate(rows.itertuples(index=False)):
    image = np.asarray(to_frame(Image.fromarray(data.load_image(row))))
    targets = frame_targets(row, preprocess)
    line = [overlay_segments(image, np.zeros((1, 1), int), alpha=0.0,
                             boxes=[(*targets["object"][0], GREEN), (*targets["watermark"][0], RED)])]
    for name, store, boxes in segmentations:
        chosen = boxes[(boxes.image_id == row.image_id) & (boxes.target == "object") & (boxes.strategy == "outer")]
        outline = [(*chosen.iloc[0][["x0", "y0", "x1", "y1"]].to_numpy(float), YELLOW)] if len(chosen) else []
        line.append(overlay_segments(image, store["labels"][position], boxes=outline))
    tiles.append(line)
    name = data.classes[int(row.label)] if row.label >= 0 else "unlabelled"
    labels.append(f"{name[:16]} #{int(row.image_id)}")
title = f"{sm.wildcards.model} on {sm.wildcards.dataset}: image | " + " | ".join(p.names)
save_png(tile_grid(tiles, row_labels=labels, title=title, tile=112), sm.output[0])
