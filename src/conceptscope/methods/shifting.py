"""The shifting test of class contrasting (Herdt & Otero Baguer, Sec. 5.2.1, Table 3, App. D.3): the
activations of images of class B are moved along the normal of the (A, B) classifier by fixed
offsets and the model runs on from the layer; the best softmax of A per pair is recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..activations import LayerRunner
from ..utils import float32_array
from .contrast import SHIFT_OFFSETS, SHIFT_REPEATS, SHIFT_TARGETS, ContrastHyperplanes


@dataclass(frozen=True)
class ShiftResult:
    """Softmax of class A for the images of B, per offset along the normal of the (A, B) classifier."""

    target: int  # A
    start: int  # B
    offsets: np.ndarray  # (O,)
    probs: np.ndarray  # (O, N): softmax of A per offset and image

    @property
    def default_probs(self) -> np.ndarray:
        return self.probs[np.flatnonzero(self.offsets == 0)[0]]

    @property
    def _best(self) -> int:
        return int(self.probs.mean(axis=1).argmax())

    @property
    def best_offset(self) -> float:
        """The offset with the highest mean softmax of A (the paper reports that one)."""
        return float(self.offsets[self._best])

    @property
    def shifted_probs(self) -> np.ndarray:
        return self.probs[self._best]


def shift_predictions(
    runner: LayerRunner,
    images: torch.Tensor,
    weight,
    target: int,
    *,
    offsets: Sequence[float] = SHIFT_OFFSETS,
    heads: list[tuple[torch.Tensor, tuple]] | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """(O, N) softmax of `target` when the layer's activations move by offset x weight (then ReLU).

    Every position moves by the same vector (the reference translates the whole map); the ReLU keeps
    the activations in the range of a post-ReLU layer. Offset 0 gives the model's own prediction.
    `heads`: `runner.head` of each batch of `images`, when already computed (one start class, many targets).
    """
    if heads is None:
        heads = [runner.head(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    normal = torch.as_tensor(float32_array(weight)).to(heads[0][0].device)
    if heads[0][0].shape[1] != len(normal):
        raise ValueError(f"the hyperplane has {len(normal)} features but layer {runner.layer!r} has {heads[0][0].shape[1]} channels")
    shape = (1, -1) + (1,) * (heads[0][0].ndim - 2)
    probs = np.empty((len(offsets), len(images)), np.float64)
    for o, offset in enumerate(offsets):
        row = 0
        for activations, saved in heads:
            moved = activations + float(offset) * normal.reshape(shape)
            if offset != 0:
                moved = torch.relu(moved)
            logits = runner.tail(moved, saved)
            probs[o, row : row + len(activations)] = torch.softmax(logits.float(), dim=1)[:, target].cpu().numpy()
            row += len(activations)
    return probs


def shifting_plan(classes: Sequence[int], *, n_targets: int = SHIFT_TARGETS, n_repeats: int = SHIFT_REPEATS, seed: int = 0) -> list[list[tuple[int, int]]]:
    """Per repeat, the (start B, target A) pairs of the paper's protocol.

    Each class is a start class once per repeat, with `n_targets` distinct random targets among the
    other classes (all of them when there are fewer). Seeded: the same classes and seed give the
    same plan.
    """
    classes = [int(c) for c in classes]
    rng = np.random.default_rng(seed)
    plan = []
    for _ in range(n_repeats):
        pairs = []
        for start in classes:
            others = [c for c in classes if c != start]
            chosen = rng.choice(others, size=min(n_targets, len(others)), replace=False) if others else []
            pairs += [(start, int(a)) for a in sorted(chosen)]
        plan.append(pairs)
    return plan


def iter_shift_results(
    runner: LayerRunner,
    images_of: Mapping[int, torch.Tensor],
    planes: ContrastHyperplanes,
    pairs: Sequence[tuple[int, int]],
    *,
    offsets: Sequence[float] = SHIFT_OFFSETS,
    batch_size: int = 64,
    progress: bool = True,
) -> Iterator[ShiftResult]:
    """`ShiftResult` for each (start B, target A) pair; each start class's activations computed once."""
    offsets = np.asarray(sorted({0.0, *map(float, offsets)}), dtype=np.float64)
    by_start: dict[int, list[int]] = {}
    for start, target in pairs:
        by_start.setdefault(int(start), []).append(int(target))
    with tqdm(total=len(pairs), desc=f"shifting test {runner.layer}", disable=not progress) as bar:
        for start, targets in by_start.items():
            images = images_of[start]
            heads = [runner.head(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
            for target in targets:
                weight, _ = planes.hyperplane(target, start)  # normal pointing from B (start) to A (target)
                probs = shift_predictions(runner, images, weight, target, offsets=offsets, heads=heads)
                yield ShiftResult(target=target, start=start, offsets=offsets, probs=probs)
                bar.update(1)


def shifting_summary(pairs: pd.DataFrame, plan: pd.DataFrame) -> dict[str, float]:
    """The paper's Table 3 row from the shifting test's per-pair results (Sec. 5.2.1).

    `pairs`: one row per distinct (start, target) with `default_pred` and `shifted_pred`, the mean
    softmax of A over the images of B unshifted and at the pair's best offset (`ShiftResult`).
    `plan`: (repeat, start, target), the pairs drawn in each repeat (`shifting_plan`). A sample of
    the table is one drawn pair's value, as in the authors' summary script: per repeat the mean and
    the std (ddof 0) over its pairs; then for kind in default, shifted:

    - `{kind}_pred_mean`: mean over the repeats of the repeat means (the table's value);
    - `{kind}_pred_repeat_std`: std (ddof 0) over the repeats of the repeat means (its first +-);
    - `{kind}_pred_std`: mean over the repeats of the std over the repeat's pairs (its bracketed
      +-, "standard deviation over all samples").

    Also n_repeats, pairs_per_repeat, n_start_classes, median_best_offset and mean_pair_accuracy
    (where `pairs` has best_offset / pair_accuracy). Empty dict when no drawn pair has a result.
    """
    drawn = plan[["repeat", "start", "target"]].merge(pairs, on=["start", "target"], how="inner")
    if not len(drawn):
        return {}
    by_repeat = drawn.groupby("repeat")
    row: dict[str, float] = {}
    for kind in ("default", "shifted"):
        means = by_repeat[f"{kind}_pred"].mean()
        row[f"{kind}_pred_mean"] = float(means.mean())
        row[f"{kind}_pred_repeat_std"] = float(means.std(ddof=0))
        row[f"{kind}_pred_std"] = float(by_repeat[f"{kind}_pred"].std(ddof=0).mean())
    row.update(n_repeats=len(means), pairs_per_repeat=len(drawn) / len(means), n_start_classes=int(drawn["start"].nunique()))
    if "best_offset" in drawn:
        row["median_best_offset"] = float(drawn["best_offset"].median())
    if "pair_accuracy" in drawn:
        row["mean_pair_accuracy"] = float(drawn["pair_accuracy"].mean())
    return row
