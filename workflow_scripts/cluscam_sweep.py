"""Rule cluscam_sweep: ClusCAM's sensitivity to K and the temperature -> sweep.csv (per image and setting).

One setting at a time around the configured ones (cluscam.n_clusters, cluscam.temperature): each K
of `sweep.n_clusters` at the configured temperature, then each `sweep.temperature` at the configured
K, on a seeded subset of `sweep.max_images` images (nested in the main subset), each map for the
predicted class; the other ClusCAM settings (drop_fraction, rescale_centroids) as configured in
`cluscam.cluscam`. Columns: n_clusters,
temperature, image_id, the four faithfulness metrics and seconds.
"""

import pandas as pd
import torch

from _common import image_loader, job_model_and_data, nested_rows, setup
from conceptscope.methods.saliency import explain_and_score
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p, w = sm.params, sm.wildcards
model, info, data, device = job_model_and_data(sm)
model.eval()
base = p.cluscam
settings = [(k, base["temperature"]) for k in p.sweep["n_clusters"]] + [(base["n_clusters"], t) for t in p.sweep["temperature"]]
settings = list(dict.fromkeys(settings))  # the configured setting may appear in both lists
rows = nested_rows(data.split(p.split), min(p.sweep["max_images"], p.max_images), p.seed)
batches = [(images.to(device), ids.numpy()) for images, _, ids in image_loader(data, rows, info, p.batch_size)]
tables = []
for n_clusters, temperature in settings:
    options = dict(base, n_clusters=n_clusters, temperature=temperature, seed=p.seed)
    for images, ids in batches:
        with torch.no_grad():
            target = model(images).argmax(1)
        _, columns = explain_and_score(model, images, w.cam_layer, "cluscam", target, options=options, steps=p.steps,
                                       deletion_baseline=p.deletion_baseline, insertion_baseline=p.insertion_baseline, batch_size=p.batch_size)
        tables.append(pd.DataFrame(dict(n_clusters=n_clusters, temperature=temperature, image_id=ids, **columns)))
    last = pd.concat(tables[-len(batches):])
    log.info("K=%d T=%g: deletion %.3f insertion %.3f (%d images)", n_clusters, temperature, last.deletion_auc.mean(), last.insertion_auc.mean(), len(last))
with atomic_path(sm.output[0]) as tmp:
    pd.concat(tables, ignore_index=True).to_csv(tmp, index=False)
