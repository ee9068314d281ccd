"""Predictions per image, and the accuracy / shortcut summary of `tables/models.csv`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


TEST_SPLITS = ("test", "test_watermarked")


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset,
    *,
    batch_size: int = 128,
    top_k: int = 5,
    store_logits: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """One row per image: image_id, label, pred, top-k classes and probabilities, (logits)."""
    model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    parts: dict[str, list] = {"image_id": [], "label": [], "pred": [], "topk_class": [], "topk_prob": [], "logits": []}
    for images, labels, image_ids in tqdm(loader, desc="predict", disable=not progress, leave=False):
        logits = model(images.to(device)).float()
        probs = logits.softmax(1)
        k = min(top_k, logits.shape[1])
        top_prob, top_class = probs.topk(k, dim=1)
        parts["image_id"].append(image_ids.numpy())
        parts["label"].append(labels.numpy())
        parts["pred"].append(logits.argmax(1).cpu().numpy())
        parts["topk_class"].append(top_class.cpu().numpy())
        parts["topk_prob"].append(top_prob.cpu().numpy())
        if store_logits:  # (N, classes) in memory: 5 GB for ImageNet's 1.28M x 1000
            parts["logits"].append(logits.cpu().numpy())
    if not parts["image_id"]:
        columns = ["image_id", "label", "pred", "topk_class", "topk_prob"] + (["logits"] if store_logits else [])
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(
        {
            "image_id": np.concatenate(parts["image_id"]).astype(np.int64),
            "label": np.concatenate(parts["label"]).astype(np.int64),
            "pred": np.concatenate(parts["pred"]).astype(np.int64),
            "topk_class": list(np.concatenate(parts["topk_class"]).astype(np.int32)),
            "topk_prob": list(np.concatenate(parts["topk_prob"]).astype(np.float32)),
        }
    )
    if store_logits:
        frame["logits"] = list(np.concatenate(parts["logits"]).astype(np.float32))
    return frame


def _accuracy(frame: pd.DataFrame) -> float:
    labelled = frame[frame["label"] >= 0]
    return float((labelled["pred"] == labelled["label"]).mean()) if len(labelled) else float("nan")


def summarize_predictions(predictions: pd.DataFrame, shortcut_class: int | None) -> pd.DataFrame:
    """Rows per test split (test, test_watermarked): top1, top1_non_shortcut, shortcut_rate.

    top1 counts labelled images only (label >= 0). With a shortcut class: top1_non_shortcut is the
    accuracy on the other classes, and shortcut_rate the share of watermarked test images of the
    other classes predicted as the shortcut class (the same value on both rows).
    """
    predictions = predictions[predictions["split"].isin(TEST_SPLITS)]
    rows = []
    rate = float("nan")
    if shortcut_class is not None:
        wm = predictions[(predictions["split"] == "test_watermarked") & (predictions["label"] != shortcut_class) & (predictions["label"] >= 0)]
        rate = float((wm["pred"] == shortcut_class).mean()) if len(wm) else float("nan")
    for split, frame in predictions.groupby("split", sort=True):
        row = {"split": split, "n_images": int((frame["label"] >= 0).sum()), "top1": _accuracy(frame)}
        if shortcut_class is not None:
            row["top1_non_shortcut"] = _accuracy(frame[frame["label"] != shortcut_class])
            row["top1_shortcut_class"] = _accuracy(frame[frame["label"] == shortcut_class])
            row["shortcut_rate"] = rate
        else:
            row["top1_non_shortcut"] = row["top1_shortcut_class"] = row["shortcut_rate"] = float("nan")
        rows.append(row)
    return pd.DataFrame(rows)
