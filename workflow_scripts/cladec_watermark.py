"""Rule cladec_watermark: does a layer keep the planted watermark? -> cladec/{ds}/{model}/{layer}/watermark.csv.

For every reconstructor of the layer (RefAE, ClaDec variants) and every watermarked test image,
the share of the watermark's signal that its reconstruction carries: the projection of
R(X_wm) - R(X) onto X_wm - X inside the recorded box, pooled over images (`watermark_kept`; 1 = the
watermark is reproduced, 0 = the reconstruction is the same with or without it). A shortcut-trained
classifier's decoder should keep it; a clean classifier's should not (the paper's claim that ClaDec
shows what the classifier uses). Also per image class: the shortcut class vs the others.

Beside it, from the reconstructions themselves: the per-pixel error inside the box on the clean twin
(R(X) against X) over the error inside the same box on the watermarked image (R(X_wm) against
X_wm), pooled over images (`box_error_clean_over_marked`, on the [0, 1] scale): 1 when the decoder
reconstructs the watermark as faithfully as the clean digit's pixels there, towards 0 as it drops it.
"""

import numpy as np
import pandas as pd
import torch

from _common import image_loader, job_model_and_data, sampled_rows, setup
from conceptscope.methods.cladec import load_reconstructor
from conceptscope.methods.cladec_analysis import box_errors, watermark_kept
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p = sm.params
model, info, data, device = job_model_and_data(sm)
marked = sampled_rows(data, "test_watermarked", p.max_test_images, p.seed)
marked = marked[marked["wm_x0"] >= 0]
if not len(marked):
    raise ValueError(f"dataset {sm.wildcards.dataset!r} has no watermarked test images")
clean = marked[["source", "array_index"]].merge(data.split("test"), on=["source", "array_index"], how="left", validate="many_to_one")
if clean["image_id"].isna().any():
    raise ValueError(f"dataset {sm.wildcards.dataset!r}: some watermarked test images have no clean twin in the test split")
boxes = marked[["wm_x0", "wm_y0", "wm_x1", "wm_y1"]].to_numpy()
in_class = (marked["label"] == data.shortcut_class).to_numpy() if data.shortcut_class is not None else np.zeros(len(marked), bool)
std = info["preprocess"]["std"]


def pooled(top: np.ndarray, bottom: np.ndarray, rows: np.ndarray) -> float:
    return top[rows].sum() / bottom[rows].sum() if rows.any() else np.nan


rows = []
for variant, path in zip(p.variants, sm.input.reconstructors):
    reconstructor = load_reconstructor(path, model, device)
    num, den, marked_error, clean_error, start = [], [], [], [], 0
    with torch.no_grad():
        for (x_wm, *_), (x, *_) in zip(image_loader(data, marked, info, p.batch_size), image_loader(data, clean, info, p.batch_size)):
            r_wm, r = reconstructor.reconstruct(x_wm.to(device)).cpu(), reconstructor.reconstruct(x.to(device)).cpu()
            b = boxes[start : start + len(x)]
            n, d = watermark_kept(r_wm, r, x_wm, x, b)
            num.append(n)
            den.append(d)
            marked_error.append(box_errors(r_wm, x_wm, b, std))
            clean_error.append(box_errors(r, x, b, std))
            start += len(x)
    num, den, marked_error, clean_error = (np.concatenate(v) for v in (num, den, marked_error, clean_error))
    every = np.ones(len(num), bool)
    row = {"variant": variant, "watermark_kept": pooled(num, den, every), "n_images": len(num),
           "watermark_kept_shortcut_class": pooled(num, den, in_class), "watermark_kept_other_classes": pooled(num, den, ~in_class),
           "box_error_clean_over_marked": pooled(clean_error, marked_error, every),
           "box_error_clean_over_marked_shortcut_class": pooled(clean_error, marked_error, in_class),
           "box_error_clean_over_marked_other_classes": pooled(clean_error, marked_error, ~in_class)}
    rows.append(row)
    log.info("%s: %.3f of the watermark kept (shortcut class %.3f, others %.3f); box error on the clean twin / on the watermarked "
             "image %.3f (%.4f / %.4f per pixel)", variant, row["watermark_kept"], row["watermark_kept_shortcut_class"],
             row["watermark_kept_other_classes"], row["box_error_clean_over_marked"], clean_error.mean(), marked_error.mean())
with atomic_path(sm.output[0]) as tmp:
    pd.DataFrame(rows).to_csv(tmp, index=False)
