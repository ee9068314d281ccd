"""Rule dora_representations: the layer's representations on the evaluation images -> representations.npz.

One forward pass over the split's images (a seeded subset with `max_images`): each channel of the
layer, mean-pooled over space, or each output logit (for `logits`, with `logit_classes: dataset` only
the classes present among the images) is one representation (DORA Def. 1). A class's logit is the
model's output of that class (`dora.dataset_logits`: its ImageNet-1k index for an ImageNet model on
a folder of wnids); a layer whose output is not (N, C, h, w) or (N, C), e.g. a transformer's tokens
(N, T, D), is refused. Where the dataset has watermarked twins of the test images, they pass too
(probing, App. A.2.1).

The file holds `acts` (N, k) float32, `image_id`, `label`, `representation` (channel or class index),
`names` (k,), `wnids` (k,; '' where unknown), and for probing `acts_marked` (M, k) with `twin` (M,):
the row in `acts` of each watermarked image's clean version.
"""

import numpy as np
import torch

from _common import image_loader, job_model_and_data, sampled_rows, setup
from conceptscope.activations import LayerRecorder
from conceptscope.data import imagenet_class_names, imagenet_wnids
from conceptscope.methods.dora import dataset_logits
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p, w = sm.params, sm.wildcards
model, info, data, device = job_model_and_data(sm)
model.eval()
layer = w.rep_layer


@torch.no_grad()
def representations(rows) -> np.ndarray:
    """(len(rows), K) activations: pooled channels of `layer`, or all logits."""
    out = []
    hooked = [] if layer == "logits" else [layer]
    with LayerRecorder(model, hooked) as recorder:
        for images, *_ in image_loader(data, rows, info, p.batch_size):
            logits = model(images.to(device))
            acts = logits if layer == "logits" else recorder.outputs[layer]
            if acts.ndim not in (2, 4):
                raise ValueError(
                    f"dora.layers.{w.model}: layer {layer!r} gives outputs of shape {tuple(acts.shape)}; DORA's representations are the "
                    "channels of an (N, C, h, w) map or an (N, C) vector (a transformer's (N, tokens, dim) output is not supported)"
                )
            out.append((acts.mean(dim=(2, 3)) if acts.ndim == 4 else acts).float().cpu().numpy())
    return np.concatenate(out)


rows = sampled_rows(data, p.split, p.max_images, p.seed)
if len(rows) < 2:
    raise ValueError(f"dataset {w.dataset!r} has {len(rows)} images in split {p.split!r}; DORA needs at least 2")
acts = representations(rows)
index = np.arange(acts.shape[1])
if layer == "logits":
    # the logit of each dataset class (refused before anything is written where none matches)
    logit_of = dataset_logits(data.classes, data.meta.get("imagenet_index"), acts.shape[1], f"dataset {w.dataset!r} with model {w.model!r}")
    class_of = {int(j): c for c, j in enumerate(logit_of)}
    if p.logit_classes == "dataset":
        index = np.array(sorted({int(logit_of[c]) for c in rows["label"].unique() if 0 <= c < len(logit_of)}))  # -1: unlabelled
        if len(index) < 2:
            raise ValueError(f"dataset {w.dataset!r}: fewer than 2 of its classes are logits of {w.model!r}; set dora.logit_classes: all")
        acts = acts[:, index]
    # a logit outside the dataset's classes (logit_classes all) is an ImageNet model's: ImageNet's name and wnid
    in_imagenet = data.meta.get("imagenet_index")
    outside = [j for j in index if j not in class_of]
    imagenet_names = imagenet_class_names() if outside else None
    names = [data.classes[class_of[j]] if j in class_of else imagenet_names[j] for j in index]
    all_wnids = imagenet_wnids() if in_imagenet is not None else None
    wnids = [all_wnids[in_imagenet[class_of[j]] if j in class_of else j] if all_wnids else "" for j in index]
else:
    names, wnids = [f"{layer}:{i}" for i in index], [""] * len(index)
log.info("%s/%s %s: %d images x %d representations", w.dataset, w.model, layer, *acts.shape)

extra = {}
if p.split == "test" and "test_watermarked" in set(data.manifest["split"]):
    marked = data.split("test_watermarked")
    marked = marked[marked["wm_x0"] >= 0]
    position = {key: i for i, key in enumerate(zip(rows["source"], rows["array_index"]))}
    twin = np.array([position.get(key, -1) for key in zip(marked["source"], marked["array_index"])])
    marked, twin = marked[twin >= 0], twin[twin >= 0]
    if len(marked):
        marked_acts = representations(marked)
        extra = {"acts_marked": (marked_acts[:, index] if layer == "logits" else marked_acts).astype(np.float32), "twin": twin}
        log.info("%d watermarked twins for probing", len(marked))

with atomic_path(sm.output[0]) as tmp:
    with open(tmp, "wb") as handle:
        np.savez(handle, acts=acts.astype(np.float32), image_id=rows["image_id"].to_numpy(), label=rows["label"].to_numpy(),
                 representation=index, names=np.array(names), wnids=np.array(wnids), **extra)
