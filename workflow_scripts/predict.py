"""Rule predict: per-image predictions of one model on every test split of one dataset -> Parquet."""

from pathlib import Path

import pandas as pd

from _common import setup
from conceptscope.data import PreparedDataset
from conceptscope.evaluation import predict
from conceptscope.models import build_transform, load_model
from conceptscope.utils import atomic_path, resolve_device

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
device = resolve_device(sm.params.device)
model, info = load_model(Path(sm.input.info).parent, device)
transform = build_transform(info["preprocess"])
data = PreparedDataset(sm.input.data)
opts = sm.params.predict
frames = []
for split in opts["splits"]:
    subset = data.torch_dataset(split, transform)
    if not len(subset):
        continue
    frame = predict(model, subset, batch_size=opts["batch_size"], top_k=opts["top_k"], store_logits=opts["store_logits"], device=device)
    frame.insert(1, "split", split)
    frames.append(frame)
    log.info("%s/%s: %d images predicted", sm.wildcards.dataset, split, len(frame))
if not frames:
    raise ValueError(f"dataset {sm.wildcards.dataset!r} has no images in the splits {opts['splits']} to predict")
with atomic_path(sm.output[0]) as tmp:
    pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
