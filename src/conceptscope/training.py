"""Training of the small classifiers the pipeline explains."""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .utils import seed_everything

SCHEDULES = ("cosine", "constant")


def train_classifier(
    model: nn.Module,
    train_set,
    *,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Train `model` in place with Adam and cross-entropy; return the per-epoch log (epoch, loss, train_acc).

    `schedule`: `cosine` anneals the learning rate to 0 over all steps; `constant` keeps it.

    Deterministic for a given seed on CPU: shuffling uses a seeded generator, no worker processes.
    """
    generator = seed_everything(seed)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator, num_workers=0)
    model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    total_steps = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, (lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps))) if schedule == "cosine" else (lambda step: 1.0)
    )
    loss_fn = nn.CrossEntropyLoss()
    log = []
    for epoch in range(1, epochs + 1):
        total_loss, correct, seen = 0.0, 0, 0
        for images, labels, _ in tqdm(loader, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False):
            images, labels = images.to(device), labels.to(device)
            optimiser.zero_grad(set_to_none=True)
            logits = model(images)
            loss = loss_fn(logits, labels)
            loss.backward()
            optimiser.step()
            scheduler.step()
            total_loss += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        log.append({"epoch": epoch, "loss": total_loss / seen, "train_acc": correct / seen})
    model.eval()
    return pd.DataFrame(log)
