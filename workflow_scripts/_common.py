"""Glue shared by the workflow scripts: logging into the rule's log file, threads, quiet progress."""

from __future__ import annotations

import logging
import os
import sys

if not sys.stderr.isatty():  # progress bars into log files: one update every 30 s, not every step
    os.environ.setdefault("TQDM_MININTERVAL", "30")


def setup(snakemake) -> logging.Logger:
    """Send log records and warnings to the rule's log file (and stderr); limit threads, keep freed memory."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        handlers.append(logging.FileHandler(snakemake.log[0], mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)
    logging.captureWarnings(True)
    from conceptscope.utils import configure_process

    configure_process(snakemake.threads)
    return logging.getLogger(f"conceptscope.{snakemake.rule}")


def selected_rows(data, selection: dict, predictions: list[str], seed: int):
    """Manifest rows chosen by a `selection` config block (split(s), per_class, by), sampled with `seed`."""
    import pandas as pd

    from conceptscope.activations import select_images

    preds = pd.concat([pd.read_parquet(p) for p in predictions]) if predictions else None
    return select_images(data.split(selection["split"]), per_class=selection["per_class"], by=selection["by"], predictions=preds, seed=seed)


def job_model_and_data(snakemake):
    """The job's model (on the configured device), its model.json info, and the prepared dataset."""
    from pathlib import Path

    from conceptscope.data import PreparedDataset
    from conceptscope.models import load_model
    from conceptscope.utils import resolve_device

    device = resolve_device(snakemake.params.device)
    model, info = load_model(Path(snakemake.input.info).parent, device)
    return model, info, PreparedDataset(snakemake.input.data), device


def job_model_and_data_info(snakemake):
    """The job's model (on the configured device, eval mode), its model.json info and the device (no dataset)."""
    from pathlib import Path

    from conceptscope.models import load_model
    from conceptscope.utils import resolve_device

    device = resolve_device(snakemake.params.device)
    model, info = load_model(Path(snakemake.input.info).parent, device)
    return model.eval(), info, device


def predicted_class_samples(snakemake, model, info, data, opts: dict, log, describe: str):
    """The classes a method explains, the images predicted as them, and one checked sample per class.

    `opts` is a method block (`concepts`, `contrast`) with classes, split, max_images, attribution,
    attribution_options and batch_size. Returns (classes, rows, samples): `samples` yields a
    `ClassSample` per class with images (one attribution pass over all of them), after refusing
    negative activations (the methods factorise them with NMF) and NaN/inf.
    """
    import numpy as np

    from conceptscope.data import ImageDataset, split_names
    from conceptscope.methods.concepts import check_non_negative, iter_class_samples
    from conceptscope.models import build_transform

    w, layer = snakemake.wildcards, snakemake.wildcards.layer
    labelled = sorted(int(c) for c in data.manifest["label"].unique() if c >= 0)
    classes = [int(c) for c in opts["classes"]] if opts["classes"] is not None else labelled
    selection = {"split": opts["split"], "per_class": opts["max_images"], "by": opts["by"]}
    rows = selected_rows(data, selection, [snakemake.input.predictions], snakemake.params.seed)
    rows = rows[rows["group"].isin(classes)].sort_values(["group", "image_id"], kind="stable")
    log.info("%s/%s/%s: %d classes, %d images of %s %s them (at most %d per class, seeded sample), %s, %s attribution",
             w.dataset, w.model, layer, len(classes), len(rows), "+".join(split_names(opts["split"])),
             "predicted as" if opts["by"] == "prediction" else "labelled", opts["max_images"], describe, opts["attribution"])
    samples = iter_class_samples(
        model,
        ImageDataset(data, rows, build_transform(info["preprocess"])),
        rows["group"].to_numpy(),
        layer,
        method=opts["attribution"],
        batch_size=opts["batch_size"],
        preprocess=info["preprocess"],
        seed=snakemake.params.seed,
        attribution_options=opts["attribution_options"],
    )

    def checked():
        for sample in samples:
            check_non_negative(sample.activations, layer)
            if not (np.isfinite(sample.activations).all() and np.isfinite(sample.attributions).all()):
                raise ValueError(f"class {sample.target}: NaN or inf in the activations or attributions of layer {layer!r}")
            yield sample

    return classes, rows, checked()


def sampled_rows(data, split: str, max_images: int | None, seed: int):
    """Manifest rows of a split, or a seeded random subset of `max_images` of them (in manifest order)."""
    import numpy as np

    rows = data.split(split)
    if max_images is not None and len(rows) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), max_images, replace=False))
        rows = rows.iloc[keep]
    return rows


def image_loader(data, rows, info: dict, batch_size: int, *, shuffle: bool = False, seed: int = 0):
    """A DataLoader of (normalised image, label, image_id) over manifest rows, shuffled with a seeded generator."""
    import torch
    from torch.utils.data import DataLoader

    from conceptscope.data import ImageDataset
    from conceptscope.models import build_transform

    dataset = ImageDataset(data, rows, build_transform(info["preprocess"]))
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)


def untrained_twin(info: dict, seed: int, device):
    """The explained model's architecture at its seeded initialisation (ClaDec's Table 6, first row)."""
    from conceptscope.models import model_from_info

    return model_from_info(info, seed=seed).to(device).eval()


def stored_rows(store, data, max_images=None):
    """Manifest rows of the images in an activation store, in store order (the first `max_images`)."""
    import numpy as np

    ids = store.image_ids[: max_images or None]
    rows = data.manifest.set_index("image_id").loc[ids].reset_index()
    if not np.array_equal(rows["image_id"].to_numpy(), ids):
        raise ValueError(f"store {store.path}: image ids do not match dataset {data.path}")
    return rows


def frame_targets(row, preprocess: dict) -> dict:
    """Boxes of one manifest row in the model's input frame: {'object': (1, 4), 'watermark': (1, 4)} (NaN where none)."""
    import numpy as np

    from conceptscope.models import frame_boxes

    obj = np.array([[row.box_x0, row.box_y0, row.box_x1, row.box_y1]], dtype=float)
    wm = np.array([[row.wm_x0, row.wm_y0, row.wm_x1, row.wm_y1]], dtype=float) if row.wm_x0 >= 0 else np.full((1, 4), np.nan)
    return {kind: frame_boxes(boxes, row.width, row.height, preprocess) for kind, boxes in (("object", obj), ("watermark", wm))}


def write_segments(path, labels_iter, n_rows: int, attrs: dict):
    """Write (image_id, labels) batches into a complete `segments.zarr` row store at `path`, atomically."""
    import numpy as np

    from conceptscope.store import RowStoreWriter, provenance
    from conceptscope.utils import atomic_path

    with atomic_path(path) as tmp:
        writer = RowStoreWriter(tmp, n_rows, chunk_rows=256, attrs=provenance("segments", **attrs))
        try:
            for ids, labels in labels_iter:
                writer.append(image_id=np.asarray(ids, np.int64), labels=np.asarray(labels, np.int32))
        except BaseException:
            writer.abort()
            raise
        writer.close()


SCORE_COLUMNS = ["image_id", "label", "target", "strategy", "segment", "x0", "y0", "x1", "y1", "iou"]


def write_scores(path, scores: list, threshold: float, log) -> None:
    """Write segment-selection rows (segment_nave, segment_baseline, nave_classwide) to `boxes.csv`, logging each hit rate."""
    import pandas as pd

    from conceptscope.utils import atomic_path

    table = pd.DataFrame(scores, columns=SCORE_COLUMNS)
    for (target, strategy), part in table.groupby(["target", "strategy"]):
        log.info("%s boxes, %s strategy: IoU > %.2f for %.3f of %d images", target, strategy, threshold, (part.iou > threshold).mean(), len(part))
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def nave_inputs(snakemake, layers, max_images=None):
    """A NAVE job's prepared dataset, the model's preprocessing, the layers' activation stores, and the
    manifest rows of the stored images (store order, the first `max_images`)."""
    import json
    from pathlib import Path

    from conceptscope.data import PreparedDataset
    from conceptscope.store import ActivationStore, layer_store_name

    data = PreparedDataset(snakemake.input.data)
    preprocess = json.loads(Path(snakemake.input.info).read_text())["preprocess"]
    stores = [ActivationStore(Path(snakemake.input.store) / layer_store_name(layer)) for layer in layers]
    return data, preprocess, stores, stored_rows(stores[0], data, max_images)


def nested_rows(rows, limit: int | None, seed: int):
    """A seeded random subset of `limit` manifest rows, kept in manifest order; with the same seed a
    smaller limit gives a subset of a larger one's (the first `limit` of one permutation)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(rows))
    return rows.iloc[np.sort(order[: len(rows) if limit is None else limit])]


def read_job_tables(paths, jobs: list[dict]):
    """The per-job CSV files as one frame, each row led by its job's columns (e.g. model, dataset, layer)."""
    import pandas as pd

    frames = []
    for job, path in zip(jobs, paths):
        frame = pd.read_csv(path)
        for column, value in reversed(list(job.items())):
            frame.insert(0, column, value)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(jobs[0]) if jobs else [])
