"""Rule cladec_figure: original | RefAE | ClaDec | difference for test images -> figures/cladec/{ds}/{model}/{layer}.png.

The paper's Figures 6-9: rows are test images (one per class first, then more), and, where the
dataset has a planted shortcut, the same images with their watermark. The difference column is red
where the RefAE's reconstruction is brighter than ClaDec's and green where ClaDec's is (Fig. 7),
scaled by the largest difference in the figure.
"""

import numpy as np
import torch
from PIL import Image

from _common import image_loader, job_model_and_data, setup
from conceptscope.methods.cladec import load_reconstructor
from conceptscope.viz import save_png, stack_vertically, tile_grid

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
model, info, data, device = job_model_and_data(sm)
refae = load_reconstructor(sm.input.refae, model, device)
cladec = load_reconstructor(sm.input.cladec, model, device)
mean = torch.tensor(info["preprocess"]["mean"]).view(1, -1, 1, 1)
std = torch.tensor(info["preprocess"]["std"]).view(1, -1, 1, 1)


def pick(split: str):
    """One image per class in class order, then the next ones, up to n (seeded order within a class)."""
    rows = data.split(split)
    if not len(rows):
        return rows
    order = rows.sample(frac=1.0, random_state=sm.params.seed)
    order = order.assign(rank=order.groupby("label").cumcount()).sort_values(["rank", "label"], kind="stable")
    return order.head(sm.params.n_images)


def to_pil(x: torch.Tensor) -> Image.Image:
    pixels = (x * std[0] + mean[0]).clamp(0, 1).permute(1, 2, 0).numpy()
    return Image.fromarray((pixels * 255).round().astype(np.uint8).squeeze(-1) if pixels.shape[-1] == 1 else (pixels * 255).round().astype(np.uint8))


def panel(split: str, title: str):
    rows = pick(split)
    if not len(rows):
        return None
    images, labels, ids = next(iter(image_loader(data, rows, info, len(rows))))
    with torch.no_grad():
        r, c = refae.reconstruct(images.to(device)).cpu(), cladec.reconstruct(images.to(device)).cpu()
    difference = ((r - c) * std).mean(1)  # RefAE - ClaDec on the pixel scale
    scale = float(difference.abs().max()) or 1.0
    tiles = []
    for i in range(len(images)):
        d = (difference[i] / scale).numpy()
        rgb = np.stack([np.clip(d, 0, 1), np.clip(-d, 0, 1), np.zeros_like(d)], -1)
        tiles.append([to_pil(images[i]), to_pil(r[i]), to_pil(c[i]), Image.fromarray((rgb * 255).round().astype(np.uint8))])
    names = data.classes
    return tile_grid(tiles, row_labels=[f"{names[int(y)]} #{int(i)}" for y, i in zip(labels, ids)],
                     title=f"{title}: original | RefAE | ClaDec | red: RefAE>ClaDec", tile=64)


panels = [p for p in (panel("test", f"{sm.wildcards.model} {sm.wildcards.layer}"),
                      panel("test_watermarked", "watermarked")) if p is not None]
save_png(stack_vertically(panels), sm.output[0])
log.info("figure with %d panel(s) written", len(panels))
