"""Rule run_shifting_test: does the hyperplane normal point from B to A? (concepts paper Sec. 5.2.1, Table 3).

The paper's protocol: every class is a start class B with `n_targets` random targets A, repeated
`n_repeats` times. For each (B, A) the layer's activations of the images predicted as B are moved
along the normal of the (A, B) classifier by each offset (then ReLU) and the model is run on from
the layer; the mean softmax of A is recorded per offset. Writes into the output directory:
  pairs.csv    per distinct (start, target): default_pred (offset 0), shifted_pred (best offset),
               best_offset, n_images, and the per-image standard deviations at both
  offsets.csv  per (start, target, offset): mean softmax of A (paper App. D.3, Figure 12)
  plan.csv     per repeat, the (start, target) pairs drawn
"""

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import job_model_and_data, selected_rows, setup
from conceptscope.activations import LayerRunner
from conceptscope.data import ImageDataset
from conceptscope.methods.contrast import ContrastHyperplanes
from conceptscope.methods.shifting import iter_shift_results, shifting_plan
from conceptscope.models import build_transform
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
shift = sm.params.shift
model, info, data, device = job_model_and_data(sm)
layer = sm.wildcards.layer
planes = ContrastHyperplanes.load(sm.input.hyperplanes)
selection = {"split": shift["split"] or sm.params.split, "per_class": shift["max_images"], "by": "prediction"}
rows = selected_rows(data, selection, [sm.input.predictions], sm.params.seed)
rows = rows[rows["group"].isin(planes.classes_)]
starts = sorted(int(c) for c in rows["group"].unique())
# targets: every class with a classifier; start classes: those that also have images to move
targets = [int(c) for c in planes.classes_]
transform = build_transform(info["preprocess"])


class StartImages(Mapping):
    """The images predicted as a start class, loaded when the class's turn comes (one class in memory)."""

    def __getitem__(self, cls):
        dataset = ImageDataset(data, rows[rows["group"] == cls], transform)
        return torch.stack([dataset[i][0] for i in range(len(dataset))]).to(device)

    def __iter__(self):
        return iter(starts)

    def __len__(self):
        return len(starts)


plan = shifting_plan(targets, n_targets=shift["n_targets"], n_repeats=shift["n_repeats"], seed=sm.params.seed)
have_images = set(starts)
plan = [[(b, a) for b, a in pairs if b in have_images] for pairs in plan]
distinct = sorted({pair for pairs in plan for pair in pairs})
runner = LayerRunner(model, layer)
log.info(
    "%s/%s/%s: %d start classes with images (split %s, at most %d each), %d targets, %d repeats -> %d distinct pairs, %d offsets; model run from the layer by %s",
    sm.wildcards.dataset, sm.wildcards.model, layer, len(starts), selection["split"], shift["max_images"], len(targets),
    shift["n_repeats"], len(distinct), len(shift["offsets"]), "its traced tail" if runner.traced else "a full forward pass with the layer replaced",
)
started = time.perf_counter()
pair_rows, offset_rows = [], []
for res in iter_shift_results(runner, StartImages(), planes, distinct, offsets=shift["offsets"], batch_size=sm.params.batch_size):
    pair_rows.append({
        "start": res.start, "target": res.target, "n_images": res.probs.shape[1],
        "default_pred": res.default_probs.mean(), "shifted_pred": res.shifted_probs.mean(), "best_offset": res.best_offset,
        "default_pred_image_std": res.default_probs.std(), "shifted_pred_image_std": res.shifted_probs.std(),
        "pair_accuracy": planes.pair_accuracy(res.target, res.start),
    })
    offset_rows += [{"start": res.start, "target": res.target, "offset": o, "pred": p} for o, p in zip(res.offsets, res.probs.mean(axis=1))]
elapsed = time.perf_counter() - started
out = Path(sm.output[0])
with atomic_path(out) as tmp:
    tmp.mkdir(parents=True)
    pairs = pd.DataFrame(pair_rows, columns=["start", "target", "n_images", "default_pred", "shifted_pred", "best_offset",
                                             "default_pred_image_std", "shifted_pred_image_std", "pair_accuracy"])
    names = {c: data.classes[c] if c < len(data.classes) else str(c) for c in targets}
    pairs.insert(2, "start_name", pairs["start"].map(names))
    pairs.insert(3, "target_name", pairs["target"].map(names))
    pairs.to_csv(tmp / "pairs.csv", index=False)
    pd.DataFrame(offset_rows, columns=["start", "target", "offset", "pred"]).to_csv(tmp / "offsets.csv", index=False)
    pd.DataFrame([{"repeat": r, "start": b, "target": a} for r, pairs_r in enumerate(plan) for b, a in pairs_r],
                 columns=["repeat", "start", "target"]).to_csv(tmp / "plan.csv", index=False)
    (tmp / "timing.json").write_text(f'{{"seconds": {elapsed:.3f}, "pairs": {len(distinct)}}}\n')
if len(pairs):
    log.info("%d pairs in %.1f s: mean softmax of the target %.3f by default, %.3f shifted", len(pairs), elapsed,
             pairs["default_pred"].mean(), pairs["shifted_pred"].mean())
