"""Rule cluscam_figure: the maps of every method side by side -> figures/cluscam/{ds}/{model}/{layer}.png.

One row per image (the first `figures` of the seeded permutation, the same images for every method):
the image as the model sees it with its object box (green) and watermark box (red), then each
method's map over it (jet colours, blended half and half).
"""

import matplotlib

matplotlib.use("Agg")
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image  # noqa: E402

from _common import frame_targets, setup  # noqa: E402
from conceptscope.data import PreparedDataset  # noqa: E402
from conceptscope.models import build_frame_transform  # noqa: E402
from conceptscope.viz import overlay_segments, save_png, tile_grid  # noqa: E402

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p, w = sm.params, sm.wildcards
data = PreparedDataset(sm.input.data)
preprocess = json.loads(Path(sm.input.info).read_text())["preprocess"]
to_frame = build_frame_transform(preprocess)
stored = [np.load(path) for path in sm.input.maps]
ids = stored[0]["image_id"]
for name, maps in zip(p.methods, stored):
    if not np.array_equal(maps["image_id"], ids):
        raise ValueError(f"{name}: maps of other images than {p.methods[0]}'s ({maps['image_id'][:4]} vs {ids[:4]}); rerun its cluscam_saliency job")
GREEN, RED = (0, 200, 0), (230, 0, 0)
jet = colormaps["jet"]
tiles, labels = [], []
for position, image_id in enumerate(ids):
    row = data.row(int(image_id))
    image = np.asarray(to_frame(Image.fromarray(data.load_image(row))), dtype=np.float32)
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    targets = frame_targets(row, preprocess)
    line = [overlay_segments(rgb.astype(np.uint8), np.zeros((1, 1), int), alpha=0.0,
                             boxes=[(*targets["object"][0], GREEN), (*targets["watermark"][0], RED)])]
    for maps in stored:
        heat = jet(np.asarray(maps["maps"][position], dtype=np.float32))[..., :3] * 255
        line.append(Image.fromarray((0.5 * rgb + 0.5 * heat).clip(0, 255).round().astype(np.uint8)))
    tiles.append(line)
    name = data.classes[int(row.label)] if row.label >= 0 else "unlabelled"
    labels.append(f"{name[:16]} #{int(image_id)}")
title = f"{w.model} {w.cam_layer} on {w.dataset}: image | " + " | ".join(p.methods)
save_png(tile_grid(tiles, row_labels=labels, title=title, tile=112), sm.output[0])
