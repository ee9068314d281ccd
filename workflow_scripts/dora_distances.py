"""Rule dora_distances: every data-aware distance between the representations -> distances.npz, n_ams.csv.

EA_n pair-wise and layer-wise from n-AMS (n blocks of d images of a seeded permutation, Def. 3-5, on
standardised activations), and the Minkowski (p), Pearson and Spearman baselines (Sec. 3). n_ams.csv
lists every representation's n-AMS images (the anchors a user inspects, Sec. 3.3).
"""

import time

import numpy as np
import pandas as pd

from _common import setup
from conceptscope.methods.dora import extreme_activation_distance, minkowski_distance, natural_ams, pearson_distance, rav_means, spearman_distance, standardize
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p = sm.params
reps = np.load(sm.input[0])
acts = reps["acts"].astype(np.float64)
start = time.perf_counter()
std = standardize(acts)
depth = p.d or len(acts) // p.n
if depth < 1:
    raise ValueError(f"dora.n={p.n} n-AMS blocks need at least {p.n} images; {sm.wildcards.dataset!r} gives {len(acts)} (lower dora.n)")
ams = natural_ams(std, p.n, depth, p.seed)
mu = rav_means(std, ams)
distances = {f"ea_n_{mode}": extreme_activation_distance(mu, mode) for mode in ("pairwise", "layerwise")}
log.info("EA_n: %d representations, n=%d, d=%d, %.1f s", acts.shape[1], p.n, depth, time.perf_counter() - start)
distances["minkowski"] = minkowski_distance(std, p.p)
distances["pearson"] = pearson_distance(std)
distances["spearman"] = spearman_distance(std)
log.info("all distances in %.1f s", time.perf_counter() - start)
with atomic_path(sm.output.distances) as tmp:
    with open(tmp, "wb") as handle:
        np.savez(handle, **{name: d.astype(np.float32) for name, d in distances.items()})
table = pd.DataFrame({"representation": np.repeat(reps["representation"], p.n), "name": np.repeat(reps["names"], p.n),
                      "block": np.tile(np.arange(p.n), len(reps["representation"])), "image_id": reps["image_id"][ams.T.ravel()],
                      "activation": acts[ams.T.ravel(), np.repeat(np.arange(acts.shape[1]), p.n)]})
with atomic_path(sm.output.ams) as tmp:
    table.to_csv(tmp, index=False)
