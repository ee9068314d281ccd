"""Rule extract_crop_vectors: grid crops of the selected images -> crop-vector stores per layer."""

from pathlib import Path

from _common import setup, selected_rows
from conceptscope.crops import extract_crop_vectors
from conceptscope.data import PreparedDataset
from conceptscope.index import IndexParams, store_inner_rows
from conceptscope.models import load_model
from conceptscope.utils import resolve_device

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
device = resolve_device(sm.params.device)
model, info = load_model(Path(sm.input.info).parent, device)
data = PreparedDataset(sm.input.data)
opts = sm.params.crops
# the layout follows the index settings (sharded where the index re-ranks from the store) but holds the
# same values either way, so the index settings are read from the config, not made a param that reruns this job
rows = selected_rows(data, opts["selection"], sm.input.predictions, sm.params.seed)
log.info("%s/%s: %d images x grids %s (%s mode), layers %s", sm.wildcards.dataset, sm.wildcards.model, len(rows), opts["grids"], opts["mode"], sm.params.layers)
extract_crop_vectors(
    model,
    data,
    rows,
    sm.params.layers,
    info["preprocess"],
    sm.output[0],
    mode=opts["mode"],
    grids=opts["grids"],
    dtype=opts["dtype"],
    batch_size=opts["batch_size"],
    chunk_rows=opts["chunk_rows"],
    compression=opts["compression"],
    inner_rows=store_inner_rows(opts["inner_rows"], len(rows) * sum(g * g for g in opts["grids"]), IndexParams(**sm.config["index"])),
    device=device,
    attrs={"dataset": sm.wildcards.dataset, "model": sm.wildcards.model, "selection": opts["selection"]},
)
