"""Rule extract_activations: selected images of one dataset through one model -> {layer}.zarr stores."""

from pathlib import Path

from _common import setup, selected_rows
from conceptscope.activations import extract_activations
from conceptscope.data import PreparedDataset
from conceptscope.models import build_transform, load_model
from conceptscope.utils import resolve_device

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
device = resolve_device(sm.params.device)
model, info = load_model(Path(sm.input.info).parent, device)
data = PreparedDataset(sm.input.data)
rows = selected_rows(data, sm.params.selection, sm.input.predictions, sm.params.seed)
store = sm.params.store
log.info("%s/%s: %d images, layers %s", sm.wildcards.dataset, sm.wildcards.model, len(rows), sm.params.layers)
extract_activations(
    model,
    data,
    rows,
    sm.params.layers,
    build_transform(info["preprocess"]),
    sm.output[0],
    dtype=store["dtype"],
    batch_size=store["batch_size"],
    chunk_images=store["chunk_images"],
    compression=store["compression"],
    compression_level=store["compression_level"],
    device=device,
    attrs={"dataset": sm.wildcards.dataset, "model": sm.wildcards.model, "preprocess": info["preprocess"], "selection": sm.params.selection},
)
