"""Glue shared by the workflow scripts: logging into the rule's log file, threads, quiet progress."""

from __future__ import annotations

import logging
import os
import sys

if not sys.stderr.isatty():  # progress bars into log files: one update every 30 s, not every step
    os.environ.setdefault("TQDM_MININTERVAL", "30")


def setup(snakemake) -> logging.Logger:
    """Send log records and warnings to the rule's log file (and stderr); limit torch threads."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        handlers.append(logging.FileHandler(snakemake.log[0], mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)
    logging.captureWarnings(True)
    from conceptscope.utils import set_threads

    set_threads(snakemake.threads)
    return logging.getLogger(f"conceptscope.{snakemake.rule}")


def selected_rows(data, selection: dict, predictions: list[str]):
    """Manifest rows chosen by a `selection` config block (split, per_class, by)."""
    import pandas as pd

    from conceptscope.activations import select_images

    splits = ["train", "test"] if selection["split"] == "all" else [selection["split"]]
    rows = pd.concat([data.split(s) for s in splits])
    preds = pd.concat([pd.read_parquet(p) for p in predictions]) if predictions else None
    return select_images(rows, per_class=selection["per_class"], by=selection["by"], predictions=preds)


def job_model_and_data(snakemake):
    """The job's model (on the configured device), its model.json info, and the prepared dataset."""
    from pathlib import Path

    from conceptscope.data import PreparedDataset
    from conceptscope.models import load_model
    from conceptscope.utils import resolve_device

    device = resolve_device(snakemake.params.device)
    model, info = load_model(Path(snakemake.input.info).parent, device)
    return model, info, PreparedDataset(snakemake.input.data), device
