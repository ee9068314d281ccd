"""Rule extract_concepts: NMF concepts of every explained class at one layer -> components.npz + classes.csv.

One attribution pass over the images of all classes (grouped by predicted class, at most S per
class), then per class one NMF per n (the figure's n and the sweep). components.npz holds, per n,
`components_n{n}` (K, n, C) and `importance_n{n}` (K, n) (NaN for classes without concepts) and
`classes` (K,); classes.csv says per class and n how many images and positions were used, the NMF
fit, or why a class has no concepts.
"""

import time

import numpy as np
import pandas as pd

from _common import job_model_and_data, predicted_class_samples, setup
from conceptscope.methods.concepts import ConceptExtractor, attribution_weighted_vectors
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
opts = sm.params.concepts
model, info, data, device = job_model_and_data(sm)
layer = sm.wildcards.layer
sizes = sorted({opts["n_concepts"], *opts["sweep"]})

classes, _, samples = predicted_class_samples(sm, model, info, data, opts, log, f"n = {sizes}")

components = {n: np.full((len(classes), n, 0), np.nan, np.float32) for n in sizes}
importance = {n: np.full((len(classes), n), np.nan) for n in sizes}
position = {c: i for i, c in enumerate(classes)}
records = []
started = time.perf_counter()
for sample in samples:
    vectors, _ = attribution_weighted_vectors(sample.activations, sample.attributions)
    n_positions = sample.activations.shape[0] * sample.activations.shape[2] * sample.activations.shape[3]
    n_scored = len(vectors)
    if opts["max_vectors"] and len(vectors) > opts["max_vectors"]:
        keep = np.sort(np.random.default_rng(sm.params.seed + sample.target).choice(len(vectors), opts["max_vectors"], replace=False))
        vectors = vectors[keep]
    k = position[sample.target]
    for n in sizes:
        record = {"class": sample.target, "n_concepts": n, "n_images": len(sample.image_ids), "n_vectors": n_scored,
                  "n_vectors_fitted": len(vectors), "kept_fraction": n_scored / n_positions}
        try:
            fit = ConceptExtractor(n, seed=sm.params.seed).fit_vectors(vectors, n_positions=n_positions, n_images=len(sample.image_ids))
        except ValueError as error:  # e.g. no position with positive attribution: say so, per class
            log.warning("class %d, n=%d: no concepts: %s", sample.target, n, error)
            records.append({**record, "status": str(error)})
            continue
        if components[n].shape[2] == 0:
            components[n] = np.full((len(classes), n, fit.components_.shape[1]), np.nan, np.float32)
        components[n][k] = fit.components_
        importance[n][k] = fit.importance_
        records.append({**record, "relative_error": fit.relative_error_, "n_iter": fit.n_iter_, "status": "ok"})
done = {r["class"] for r in records}
for c in classes:
    if c not in done:
        records += [{"class": c, "n_concepts": n, "n_images": 0, "n_vectors": 0, "status": "no image is predicted as this class"} for n in sizes]
elapsed = time.perf_counter() - started
table = pd.DataFrame(records).sort_values(["class", "n_concepts"], kind="stable")
table.insert(1, "class_name", [data.classes[c] if c < len(data.classes) else str(c) for c in table["class"]])
n_ok = int((table.loc[table["n_concepts"] == opts["n_concepts"], "status"] == "ok").sum())
log.info("concepts for %d of %d classes in %.1f s (%.2f s per class)", n_ok, len(classes), elapsed, elapsed / max(len(classes), 1))
arrays = {"classes": np.asarray(classes, np.int64), "layer": np.asarray(layer), "seconds": np.asarray(elapsed)}
for n in sizes:
    arrays[f"components_n{n}"] = components[n]
    arrays[f"importance_n{n}"] = importance[n]
with atomic_path(sm.output.components) as tmp:
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
with atomic_path(sm.output.classes) as tmp:
    table.to_csv(tmp, index=False)
