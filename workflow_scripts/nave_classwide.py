"""Rule nave_classwide: class-wide NAVE clusters (Sec. 4.3) -> nave/{ds}/{model}/{layers}/classwide/ and a figure.

The pixels of all stored images of a class (at most `max_images`) are clustered together into K
clusters (paper: K = 10, Ward, the last three residual blocks), fitting on a seeded subset of at
most `max_fit_pixels` pixels and assigning every pixel to its nearest centre, so memory stays
bounded for hundreds of images. A cluster id means the same thing in every image of the class.
Writes `segments.zarr`, `boxes.csv` (the same selection as image-wise NAVE) and the paper's Figure 3
layout: image | image-wise NAVE | class-wide NAVE, for the first images of the first classes.
"""

import numpy as np
from PIL import Image

from _common import frame_targets, nave_inputs, setup, write_scores, write_segments
from conceptscope.methods.nave import ActivationClustering, score_segments
from conceptscope.models import build_frame_transform, frame_size
from conceptscope.store import RowStore
from conceptscope.viz import overlay_segments, save_png, tile_grid

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p = sm.params
data, preprocess, stores, rows = nave_inputs(sm, p.layers, p.max_images_stored)
classes = p.classes if p.classes is not None else sorted(c for c in rows["label"].unique().tolist() if c >= 0)  # -1: unlabelled
picked = {cls: np.flatnonzero(rows["label"].to_numpy() == cls)[: p.max_images] for cls in classes}
picked = {cls: positions for cls, positions in picked.items() if len(positions)}
log.info("class-wide NAVE of %s %s: %d classes, K=%d, %s", sm.wildcards.model, list(p.layers), len(picked), p.k, p.clustering)
scores, labels_of = [], {}


def segment():
    for cls, positions in picked.items():
        nave = ActivationClustering(n_clusters=p.k, method=p.clustering, resolution=p.resolution, seed=p.seed, max_fit_pixels=p.max_fit_pixels)
        labels = nave.fit_predict([s.numpy("activations", positions) for s in stores])
        part = rows.iloc[positions]
        for row, image_labels in zip(part.itertuples(index=False), labels):
            frame = frame_size(row.width, row.height, preprocess)
            for hit in score_segments(image_labels, frame, p.strategies, frame_targets(row, preprocess)):
                scores.append({"image_id": row.image_id, "label": row.label, **hit})
        labels_of[cls] = labels
        log.info("class %d: %d images, cluster sizes %s", cls, len(positions), np.bincount(labels.ravel()).tolist())
        yield part["image_id"].to_numpy(), labels


n_rows = sum(len(v) for v in picked.values())
write_segments(sm.output.segments, segment(), n_rows, {"dataset": sm.wildcards.dataset, "model": sm.wildcards.model,
               "layers": list(p.layers), "k": p.k, "clustering": p.clustering, "classes": [int(c) for c in picked], "seed": p.seed})
write_scores(sm.output.boxes, scores, sm.config["nave"]["iou_threshold"], log)

# Figure 3: image | image-wise | class-wide, the first images of the first classes
imagewise = RowStore(sm.input.imagewise)
position_of = {int(i): j for j, i in enumerate(imagewise["image_id"][:])}
to_frame = build_frame_transform(preprocess)
tiles, names = [], []
for cls in list(picked)[: p.figure_classes]:
    for position, labels in list(zip(picked[cls], labels_of[cls]))[: p.figure_images]:
        row = rows.iloc[position]
        image = np.asarray(to_frame(Image.fromarray(data.load_image(row))))
        own = imagewise["labels"][position_of[int(row.image_id)]]
        tiles.append([Image.fromarray(image), overlay_segments(image, own), overlay_segments(image, labels, n_colors=p.k)])
        names.append(f"{data.classes[cls][:16]} #{int(row.image_id)}")
figure = tile_grid(tiles, row_labels=names, tile=112,
                   title=f"{sm.wildcards.model} {'+'.join(p.layers)}: image | image-wise NAVE | class-wide NAVE (K={p.k}, shared colours)")
save_png(figure, sm.output.figure)
