"""Rule build_crop_index: one layer's crop vectors -> FAISS index (+ its parameters as JSON)."""

from pathlib import Path

from _common import setup
from conceptscope.index import IndexParams, build_crop_index, index_info, save_index
from conceptscope.store import CropStore, layer_store_name

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
store = CropStore(Path(sm.input.crops) / layer_store_name(sm.wildcards.layer))
params = IndexParams(**sm.params.index)
index = build_crop_index(store, params)
info = index_info(index, params, store)
log.info("%s index over %d vectors of dim %d", info["factory"], info["ntotal"], info["dim"])
save_index(index, sm.output.index, info)
