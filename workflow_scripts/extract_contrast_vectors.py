"""Rule extract_contrast_vectors: per class, the activation vectors the class relies on -> vectors.zarr + vectors.csv.

Concepts paper Sec. 5.1.1 (Figure 3, steps 1-3): the images the model predicts as each class (at
most `max_images`), one attribution pass at the layer for the predicted class, and per image the
positions whose attribution is at least `cutoff` x the image's maximum; their activation vectors
are stored unscaled, once per class. vectors.csv says per class how many images and positions
were used, or why a class has none.
"""

import pandas as pd

from _common import job_model_and_data, predicted_class_samples, setup
from conceptscope.methods.contrast import cutoff_vectors
from conceptscope.store import ClassVectorStore, provenance
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
opts = sm.params.contrast
model, info, data, device = job_model_and_data(sm)
layer = sm.wildcards.layer

classes, _, samples = predicted_class_samples(sm, model, info, data, opts, log, f"cutoff {opts['cutoff']:.2f} x max")
records = []
attrs = provenance("contrast_vectors", dataset=sm.wildcards.dataset, model=sm.wildcards.model, layer=layer,
                   cutoff=opts["cutoff"], attribution=opts["attribution"], split=opts["split"], by=opts["by"], max_images=opts["max_images"], seed=sm.params.seed)
with atomic_path(sm.output.vectors) as tmp:
    store = ClassVectorStore.create(tmp, attrs)
    for sample in samples:
        vectors, positions = cutoff_vectors(sample.activations, sample.attributions, opts["cutoff"])
        store.add(sample.target, vectors, sample.image_ids[positions[:, 0]], positions[:, 1:])
        n_positions = sample.activations.shape[0] * sample.activations.shape[2] * sample.activations.shape[3]
        records.append({"class": sample.target, "n_images": len(sample.image_ids), "n_positions": n_positions, "n_vectors": len(vectors),
                        "kept_fraction": len(vectors) / n_positions, "status": "ok" if len(vectors) else "no position with positive attribution"})
    store.close()
done = {r["class"] for r in records}
records += [{"class": c, "n_images": 0, "n_positions": 0, "n_vectors": 0, "status": "no image is predicted as this class"} for c in classes if c not in done]
table = pd.DataFrame(records, columns=["class", "n_images", "n_positions", "n_vectors", "kept_fraction", "status"]).sort_values("class", kind="stable")
table.insert(1, "class_name", [data.classes[c] if c < len(data.classes) else str(c) for c in table["class"]])
with atomic_path(sm.output.classes) as tmp:
    table.to_csv(tmp, index=False)
ok = table[table["n_vectors"] > 0]
log.info("%d of %d classes have cutoff vectors (%d vectors, %.1f%% of their positions)",
         len(ok), len(classes), int(ok["n_vectors"].sum()), 100 * ok["n_vectors"].sum() / max(1, ok["n_positions"].sum()))
