"""Rule cluscam_saliency: one saliency method's maps and faithfulness -> per_image.csv, watermark.csv, maps.npz.

The method (ClusCAM or a baseline, by name) explains each image of a seeded subset of the split
(`max_images`, or `costly.max_images` for the costly methods: a subset of the same permutation, so the
images are shared), for the predicted class or the label. Per image: the seconds spent on the map,
deletion/insertion AUC, average drop, increase in confidence, the target's probability and, where
the dataset records an object box, the box's share of the frame and the map's mass inside it.

Where the split is `test` and the dataset has watermarked twins (the planted shortcut), the method
also explains those images (same limit) and records the map's mass inside the watermark box beside
the box's share of the frame (what a uniform map would give): watermark.csv (empty without them).

maps.npz holds the maps of the first `figures` images of the permutation (float16) for the figure.
"""

import numpy as np
import pandas as pd
import torch

from _common import frame_targets, image_loader, job_model_and_data, nested_rows, setup
from conceptscope.activations import LayerRecorder
from conceptscope.methods.saliency import LAYER_FREE_METHODS, explain_and_score, saliency_mass_in_box
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p, w = sm.params, sm.wildcards
model, info, data, device = job_model_and_data(sm)
model.eval()
preprocess = info["preprocess"]
imagenet_index = data.meta.get("imagenet_index")


def model_classes(labels: torch.Tensor) -> torch.Tensor:
    """Dataset labels as the model's output indices (ImageNet-1k indices for a 1000-class model)."""
    if info["num_classes"] == 1000 and imagenet_index is not None and len(data.classes) != 1000:
        labels = torch.tensor([imagenet_index[int(c)] for c in labels])
    if labels.min() < 0 or labels.max() >= info["num_classes"]:
        raise ValueError(f"cluscam.target 'label': labels of {w.dataset!r} are not classes of {w.model!r} ({info['num_classes']} outputs); use target: prediction")
    return labels


def explain(rows: pd.DataFrame, score: bool):
    """Maps (N, H, W) and per-image columns for manifest rows, batch by batch."""
    maps, columns = [], []
    for images, labels, ids in image_loader(data, rows, info, p.batch_size):
        images = images.to(device)
        with torch.no_grad():
            probabilities = torch.softmax(model(images), 1)
        target = probabilities.argmax(1) if p.target == "prediction" else model_classes(labels).to(device)
        batch_maps, batch = explain_and_score(model, images, w.cam_layer, w.method, target, options=p.options, steps=p.steps,
                                              deletion_baseline=p.deletion_baseline, insertion_baseline=p.insertion_baseline,
                                              batch_size=p.batch_size, score=score)
        batch.update(image_id=ids.numpy(), label=labels.numpy(), target=target.cpu().numpy(),
                     probability=probabilities.gather(1, target[:, None])[:, 0].cpu().numpy())
        maps.append(batch_maps)
        columns.append(pd.DataFrame(batch))
        log.info("%s: %d images", w.method, sum(len(c) for c in columns))
    return torch.cat(maps), pd.concat(columns, ignore_index=True)


def box_columns(rows: pd.DataFrame, maps: torch.Tensor, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Each image's `kind` box ('object' or 'watermark') as a share of the frame, and the map's mass inside it."""
    boxes = np.concatenate([frame_targets(row, preprocess)[kind] for row in rows.itertuples(index=False)])
    has_box = np.isfinite(boxes).all(1)
    height, width = maps.shape[1:]
    share = np.where(has_box, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (height * width), np.nan)
    mass = np.full(len(rows), np.nan)
    if has_box.any():
        mass[has_box] = saliency_mass_in_box(maps[torch.from_numpy(has_box)], boxes[has_box])
    return share, mass

split_rows = data.split(p.split)
if not len(split_rows):
    raise ValueError(f"dataset {w.dataset!r} has no images in split {p.split!r}")
rows = nested_rows(split_rows, p.max_images, p.seed)
if w.method not in LAYER_FREE_METHODS:
    first = next(iter(image_loader(data, rows.iloc[:1], info, 1)))[0].to(device)
    with LayerRecorder(model, [w.cam_layer]) as recorder, torch.no_grad():
        model(first)
    shape = tuple(recorder.outputs[w.cam_layer].shape)
    if len(shape) != 4 or shape[2] * shape[3] < 2:
        raise ValueError(f"config key 'cluscam.layers.{w.model}': layer {w.cam_layer!r} gives {shape} on {w.dataset!r}; CAM methods need feature maps (B, K, h, w) larger than 1 x 1")
log.info("%s/%s %s %s: %d images of %s", w.dataset, w.model, w.cam_layer, w.method, len(rows), p.split)
maps, table = explain(rows, score=True)
table["object_fraction"], table["mass_in_object"] = box_columns(rows, maps, "object")

marked = data.split("test_watermarked") if p.split == "test" else split_rows.iloc[:0]
marked = nested_rows(marked[marked["wm_x0"] >= 0], p.max_images, p.seed)
if len(marked):
    marked_maps, watermark = explain(marked, score=False)
    watermark["box_fraction"], watermark["mass_in_box"] = box_columns(marked, marked_maps, "watermark")
    watermark = watermark[["image_id", "label", "target", "probability", "box_fraction", "mass_in_box", "seconds"]]
    log.info("watermark: mean mass in box %.3f (box %.3f of the frame)", watermark["mass_in_box"].mean(), watermark["box_fraction"].mean())
else:
    watermark = pd.DataFrame(columns=["image_id", "label", "target", "probability", "box_fraction", "mass_in_box", "seconds"])

shown = nested_rows(split_rows, min(p.figures, len(rows)), p.seed)["image_id"].to_numpy()
position = {image_id: i for i, image_id in enumerate(table["image_id"])}
order = ["image_id", "label", "target", "probability", "deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence",
         "object_fraction", "mass_in_object", "seconds"]
with atomic_path(sm.output.per_image) as tmp:
    table[order].to_csv(tmp, index=False)
with atomic_path(sm.output.watermark) as tmp:
    watermark.to_csv(tmp, index=False)
with atomic_path(sm.output.maps) as tmp:
    with open(tmp, "wb") as handle:
        np.savez(handle, image_id=shown, maps=maps[[position[i] for i in shown]].numpy().astype(np.float16))
