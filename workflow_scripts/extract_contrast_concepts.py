"""Rule extract_contrast_concepts: why A rather than B? NMF concepts of the contrast-scored activations.

Concepts paper Sec. 5.1.2: for each [A, B] pair, the layer's activations of the images predicted as
A are scored per position by the (A, B) classifier, x' = max(w.x + b, 0) x, and factorised into n
concepts. components.npz has the class-concepts layout (`classes` = A per row, `components_n{n}`,
`importance_n{n}`) plus `against` = B, so the crop step and the prediction test are the class
concepts' own. pairs.csv says per pair how many images and positions were used, the pair's training
accuracy, or why it has no concepts.
"""

import time

import numpy as np
import pandas as pd
import torch

from _common import job_model_and_data, selected_rows, setup
from conceptscope.activations import LayerRunner
from conceptscope.data import ImageDataset
from conceptscope.methods.concepts import ConceptExtractor, check_non_negative
from conceptscope.methods.contrast import ContrastHyperplanes, contrast_weighted_vectors
from conceptscope.models import build_transform
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
opts = sm.params.contrast
model, info, data, device = job_model_and_data(sm)
layer = sm.wildcards.layer
n = opts["n_concepts"]
planes = ContrastHyperplanes.load(sm.input.hyperplanes)
trained = [int(c) for c in planes.classes_]
if opts["concept_pairs"] is not None:
    pairs = [(int(a), int(b)) for a, b in opts["concept_pairs"]]
else:  # each class against the class its classifier separates it from worst: the most similar one
    pairs = []
    for a in trained:
        others = [b for b in trained if b != a]
        if others:
            pairs.append((a, min(others, key=lambda b: (planes.pair_accuracy(a, b), b))))
selection = {"split": opts["split"], "per_class": opts["max_images"], "by": opts["by"]}
rows = selected_rows(data, selection, [sm.input.predictions], sm.params.seed)
transform = build_transform(info["preprocess"])
runner = LayerRunner(model, layer)
log.info("%s/%s/%s: %d contrast pairs, n = %d", sm.wildcards.dataset, sm.wildcards.model, layer, len(pairs), n)

components = np.full((len(pairs), n, 0), np.nan, np.float32)
importance = np.full((len(pairs), n), np.nan)
records = []
started = time.perf_counter()
by_class: dict[int, list[int]] = {}
for k, (a, _) in enumerate(pairs):
    by_class.setdefault(a, []).append(k)
for a, members in by_class.items():
    chosen = rows[rows["group"] == a]
    activations = None
    if len(chosen):
        dataset = ImageDataset(data, chosen, transform)
        images = [dataset[i][0] for i in range(len(dataset))]
        activations = torch.cat([runner.activations(torch.stack(images[i : i + opts["batch_size"]]).to(device))
                                 for i in range(0, len(images), opts["batch_size"])]).float().cpu().numpy()
        check_non_negative(activations, layer)
    for k in members:
        b = pairs[k][1]
        record = {"class": a, "against": b, "n_concepts": n, "n_images": len(chosen)}
        try:
            if activations is None:
                raise ValueError("no image is predicted as this class")
            weight, bias = planes.hyperplane(a, b)
            record["pair_accuracy"] = planes.pair_accuracy(a, b)
            vectors, _ = contrast_weighted_vectors(activations, weight, bias)
            n_positions = activations.shape[0] * activations.shape[2] * activations.shape[3]
            record.update({"n_vectors": len(vectors), "kept_fraction": len(vectors) / n_positions})
            fit = ConceptExtractor(n, seed=sm.params.seed).fit_vectors(vectors, n_positions=n_positions, n_images=len(chosen))
        except (KeyError, ValueError) as error:  # e.g. a class without vectors or images: say so, per pair
            log.warning("pair (%d, %d): no contrast concepts: %s", a, b, error)
            records.append({**record, "status": str(error).strip("'\"")})
            continue
        if components.shape[2] == 0:
            components = np.full((len(pairs), n, fit.components_.shape[1]), np.nan, np.float32)
        components[k] = fit.components_
        importance[k] = fit.importance_
        records.append({**record, "relative_error": fit.relative_error_, "status": "ok"})
elapsed = time.perf_counter() - started
table = pd.DataFrame(records, columns=["class", "against", "n_concepts", "n_images", "pair_accuracy", "n_vectors", "kept_fraction", "relative_error", "status"])
names = lambda c: data.classes[c] if c < len(data.classes) else str(c)  # noqa: E731
table.insert(1, "class_name", table["class"].map(names))
table.insert(3, "against_name", table["against"].map(names))
log.info("contrast concepts for %d of %d pairs in %.1f s", int((table["status"] == "ok").sum()), len(pairs), elapsed)
arrays = {"classes": np.asarray([a for a, _ in pairs], np.int64).reshape(-1), "against": np.asarray([b for _, b in pairs], np.int64).reshape(-1),
          "layer": np.asarray(layer), "seconds": np.asarray(elapsed), f"components_n{n}": components, f"importance_n{n}": importance}
with atomic_path(sm.output.components) as tmp:
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
with atomic_path(sm.output.pairs) as tmp:
    table.to_csv(tmp, index=False)
