"""Rule train_contrast_hyperplanes: a linear classifier for every pair of classes -> hyperplanes.zarr + pairs.parquet.

Concepts paper Sec. 5.1.1 (Figure 3, step 4): a linear layer with a scalar bias and a sigmoid, BCE,
full-batch SGD (lr 0.01, 100 epochs) between the cutoff vectors of two classes; all pairs are
trained together (`ContrastHyperplanes`), on the GPU when there is one. pairs.parquet lists each
pair's classes, vector counts, training accuracy and loss.
"""

import time

import pandas as pd

from _common import setup
from conceptscope.methods.contrast import ContrastHyperplanes
from conceptscope.store import ClassVectorStore, provenance
from conceptscope.utils import atomic_path, resolve_device

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
opts = sm.params.contrast
store = ClassVectorStore(sm.input.vectors)
counts = store.counts
vectors = {c: store.vectors(c) for c in store.classes if counts[c]}
device = resolve_device(sm.params.device)
log.info("%d classes with cutoff vectors (%d in all), %s pairs, on %s", len(vectors), sum(counts.values()),
         "ordered" if opts["ordered"] else "unordered", device)
started = time.perf_counter()
planes = ContrastHyperplanes(epochs=opts["epochs"], lr=opts["lr"], ordered=opts["ordered"], seed=sm.params.seed,
                             chunk_pairs=opts["chunk_pairs"], device=device).fit(vectors)
elapsed = time.perf_counter() - started
if len(planes.pairs_):
    log.info("%d pair classifiers in %.1f s; training accuracy mean %.3f, min %.3f", len(planes.pairs_), elapsed,
             planes.accuracy_.mean(), planes.accuracy_.min())
else:
    log.warning("no pair to contrast: %d class(es) have cutoff vectors (vectors.csv says why), at least 2 are needed", len(vectors))
attrs = provenance("contrast_hyperplanes", **{k: store.attrs[k] for k in ("dataset", "model", "layer", "cutoff", "attribution")},
                   seconds=elapsed, device=str(device))
with atomic_path(sm.output.hyperplanes) as tmp:
    planes.save(tmp, attrs)
table = pd.DataFrame({"class_a": planes.pairs_[:, 0], "class_b": planes.pairs_[:, 1], "accuracy": planes.accuracy_, "loss": planes.loss_})
table["n_a"] = table["class_a"].map(counts)
table["n_b"] = table["class_b"].map(counts)
with atomic_path(sm.output.pairs) as tmp:
    table.to_parquet(tmp, index=False)
