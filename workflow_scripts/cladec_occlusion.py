"""Rule cladec_occlusion: accuracy with the most vs the least relevant square occluded -> occlusion.csv.

Sec. 6.6: per test image 16 square occlusions (a 4 x 4 grid, 0.375 of the side) filled with the
mean pixel of the training images. Relevance of an occlusion O: for ClaDec the summed squared
difference, inside O, between the reconstructions of the occluded and the original image; for
Grad-CAM (at the same layer, for the predicted class, scaled to [0, 1] per image) the summed map
inside O. Ties are broken at random (seeded). The explained classifier is then scored on the images
with their least and their most relevant area occluded: a method that finds what matters has a
large gap (delta_acc = least-occluded accuracy - most-occluded accuracy).
"""

import numpy as np
import pandas as pd
import torch

from _common import image_loader, job_model_and_data, sampled_rows, setup
from conceptscope.attribution import grad_cam
from conceptscope.methods.cladec import load_reconstructor
from conceptscope.methods.cladec_analysis import box_sums, cladec_occlusion_relevance, extreme_occlusions, occluded_predictions, occlusion_boxes
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p = sm.params
model, info, data, device = job_model_and_data(sm)
model.eval()
reconstructor = load_reconstructor(sm.input.reconstructor, model, device)
layer = sm.wildcards.layer

# the fill: the mean pixel (per channel, in the model's input units) of the decoders' training images
total, count = 0.0, 0
for images, *_ in image_loader(data, sampled_rows(data, "train", p.max_images, p.seed), info, p.batch_size):
    total, count = total + images.sum(dim=(0, 2, 3)), count + images.shape[0] * images.shape[2] * images.shape[3]
fill = (total / count).float()

test_rows = sampled_rows(data, "test", p.max_test_images, p.seed)
images, labels = [], []
for x, y, _ in image_loader(data, test_rows, info, p.batch_size):
    images.append(x)
    labels.append(y)
images, labels = torch.cat(images), torch.cat(labels).numpy()
boxes = occlusion_boxes(images.shape[2], images.shape[3], size=p.occlusion["size"], grid=p.occlusion["grid"])
log.info("%d test images, %d occlusions of %d px, fill %s", len(images), len(boxes), boxes[0][2] - boxes[0][0], fill.tolist())

with torch.no_grad():
    predicted = torch.cat([model(x.to(device)).argmax(1).cpu() for x in images.split(p.batch_size)])
relevance = {
    "cladec": torch.cat([cladec_occlusion_relevance(reconstructor, x.to(device), boxes, fill.to(device)) for x in images.split(p.batch_size)]),
    "gradcam": torch.cat([box_sums(grad_cam(model, x, layer, t).cpu(), boxes) for x, t in zip(images.split(p.batch_size), predicted.split(p.batch_size))]),
}
rng = np.random.default_rng(p.seed)
rows = []
for method, scores in relevance.items():
    least, most = extreme_occlusions(scores.numpy(), rng)
    acc_least = float((occluded_predictions(model, images, boxes, least, fill) == labels).mean())
    acc_most = float((occluded_predictions(model, images, boxes, most, fill) == labels).mean())
    constant = int(np.isclose(scores.numpy().min(1), scores.numpy().max(1), rtol=1e-6, atol=0).sum())
    rows.append({"method": method, "acc_most_relevant_occluded": acc_most, "acc_least_relevant_occluded": acc_least,
                 "delta_acc": acc_least - acc_most, "acc_unoccluded": float((predicted.numpy() == labels).mean()),
                 "n_images": len(images), "n_constant_relevance": constant, "n_occlusions": len(boxes)})
    log.info("%s: accuracy %.3f with the most relevant area occluded, %.3f with the least (delta %.3f); %d images with constant relevance",
             method, acc_most, acc_least, acc_least - acc_most, constant)
with atomic_path(sm.output[0]) as tmp:
    pd.DataFrame(rows).to_csv(tmp, index=False)
