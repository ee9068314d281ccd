"""Rule dora_analysis: outlier representations, anomaly AUC, Mantel tests, probing and the atlas.

For every distance matrix (data-aware ones, and EA_s on its subset where s-AMS ran):
- outliers.csv: each detector's score, rank (1 = most anomalous) and flag per representation
  (Sec. 4 "Identifying Outlier Representations"), with the probing AUC where there is one;
- anomaly.csv: with `anomaly_classes` for the dataset and `logits`, the AUC-ROC of each detector's
  scores for finding those classes' logits (Sec. 5.4, Table 3), averaged over seeds for the
  stochastic detectors;
- mantel.csv: where every representation is an ImageNet class logit, the Mantel correlation with each
  WordNet distance (Sec. 5.3, Table 1);
- probing.csv: the representations that best tell watermarked from clean twins (AUC, App. A.2.1) and
  their rank in each detector's outlier ranking (does DORA put the shortcut detectors on top?);
- the atlas: UMAP of one distance matrix, coloured by probing AUC, anomaly class or outlier score.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from _common import setup  # noqa: E402
from conceptscope.methods.dora import atlas_embedding, outlier_ranks, outlier_scores, probing_auc, roc_auc  # noqa: E402
from conceptscope.utils import atomic_path  # noqa: E402

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p, w = sm.params, sm.wildcards
reps = np.load(sm.input.representations)
names = reps["names"].astype(str)
k = len(names)
matrices = {name: (matrix.astype(np.float64), np.arange(k)) for name, matrix in np.load(sm.input.distances).items()}
if "sams" in sm.input.keys():
    sams = np.load(sm.input.sams)
    for name in ("ea_s_pairwise", "ea_s_layerwise"):
        matrices[name] = (sams[name].astype(np.float64), sams["positions"])
STOCHASTIC = {"iforest", "feature_bagging"}


def split_name(name: str) -> tuple[str, str]:
    """'ea_n_layerwise' -> ('ea_n', 'layerwise'); baselines have no mode."""
    for mode in ("pairwise", "layerwise"):
        if name.endswith("_" + mode):
            return name[: -len(mode) - 1], mode
    return name, ""


def write(path, rows, columns):
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False)


def scores_of(matrix, detector, seed):
    n_neighbors = min(p.outliers["n_neighbors"], len(matrix) - 1)
    return outlier_scores(matrix, detector, contamination=p.outliers["contamination"], n_neighbors=n_neighbors, seed=seed)


# the known anomalous representations (logits of `anomaly_classes`), checked before anything is written
positive = None
if p.anomaly_classes and w.rep_layer != "logits":
    log.info("anomaly classes name logits; %s has channels, so no anomaly AUC here", w.rep_layer)
elif p.anomaly_classes:
    missing = sorted(set(p.anomaly_classes) - set(names))
    if missing:
        raise ValueError(f"dora.anomaly_classes.{w.dataset}: {missing} are not among the representations of {w.model}/{w.rep_layer} (e.g. {list(names[:5])})")
    positive = np.isin(names, p.anomaly_classes)

probing = None
if "acts_marked" in reps.files:
    probing = probing_auc(reps["acts_marked"], reps["acts"][reps["twin"]])
    log.info("probing: %d twins; best AUC %.3f (%s)", len(reps["twin"]), probing.max(), names[probing.argmax()])

# outliers, one fit per matrix x detector at the run's seed
ranked = {}
outlier_rows = []
for name, (matrix, positions) in matrices.items():
    distance, mode = split_name(name)
    for detector in p.outliers["detectors"]:
        scores, flags = scores_of(matrix, detector, p.seed)
        ranks = outlier_ranks(scores)
        ranked[name, detector] = dict(zip(positions, zip(ranks, flags)))
        for pos, score, rank, flag in zip(positions, scores, ranks, flags):
            outlier_rows.append([int(reps["representation"][pos]), names[pos], distance, mode, detector, float(score), int(rank), bool(flag),
                                 len(positions), float(probing[pos]) if probing is not None else np.nan])
        log.info("%s %s: flagged %s", name, detector, [names[i] for i in positions[flags]][:10])
write(sm.output.outliers, outlier_rows, ["representation", "name", "distance", "mode", "detector", "score", "rank", "flagged", "n_representations", "probing_auc"])

# anomaly identification (Table 3)
anomaly_rows = []
if positive is not None:
    for name, (matrix, positions) in matrices.items():
        distance, mode = split_name(name)
        truth = positive[positions]
        if truth.all() or not truth.any():
            log.warning("%s: the subset holds %d of the anomalies; no AUC", name, int(truth.sum()))
            continue
        for detector in p.outliers["detectors"]:
            seeds = range(p.seed, p.seed + (p.outliers["repeats"] if detector in STOCHASTIC else 1))
            aucs = [roc_auc(scores_of(matrix, detector, seed)[0], truth) for seed in seeds]
            anomaly_rows.append([distance, mode, detector, float(np.mean(aucs)), float(np.std(aucs)), len(aucs), len(positions), int(truth.sum())])
            log.info("anomaly %s %s: AUC %.3f", name, detector, np.mean(aucs))
write(sm.output.anomaly, anomaly_rows, ["distance", "mode", "detector", "auc", "auc_std", "repeats", "n_representations", "n_anomalies"])

# Mantel against WordNet (Table 1)
mantel_rows = []
wnids = reps["wnids"].astype(str)
if k >= 3 and all(wnids):
    from conceptscope.semantic import mantel, wordnet_distances

    semantic = wordnet_distances(list(wnids), tuple(p.mantel["baselines"]))
    for name, (matrix, positions) in matrices.items():
        distance, mode = split_name(name)
        for baseline, reference in semantic.items():
            r, p_value = mantel(matrix, reference[np.ix_(positions, positions)], permutations=p.mantel["permutations"], seed=p.seed)
            mantel_rows.append([distance, mode, baseline, float(r), float(p_value), len(positions)])
            log.info("Mantel %s vs %s: r %.3f (p %.4f)", name, baseline, r, p_value)
else:
    log.info("no Mantel test: the representations are not all ImageNet class logits")
write(sm.output.mantel, mantel_rows, ["distance", "mode", "baseline", "mantel_r", "p_value", "n_representations"])

# probing: where do the best watermark detectors rank as outliers?
probing_rows = []
if probing is not None:
    order = np.argsort(-probing, kind="stable")
    for auc_rank, pos in enumerate(order[: p.probing_top], 1):
        for (name, detector), by_position in ranked.items():
            if pos not in by_position:
                continue
            distance, mode = split_name(name)
            rank, flag = by_position[pos]
            probing_rows.append([int(reps["representation"][pos]), names[pos], float(probing[pos]), auc_rank, distance, mode, detector,
                                 int(rank), bool(flag), len(matrices[name][1])])
write(sm.output.probing, probing_rows, ["representation", "name", "probing_auc", "auc_rank", "distance", "mode", "detector", "outlier_rank", "flagged", "n_representations"])

# the representation atlas
matrix, positions = matrices[p.atlas["distance"]]
xy = atlas_embedding(matrix, n_neighbors=p.atlas["n_neighbors"], seed=p.seed)
lof, flags = scores_of(matrix, "lof", p.seed)
fig, ax = plt.subplots(figsize=(7, 6))
if probing is not None:
    colour, label = probing[positions], "probing AUC (watermarked vs clean)"
elif positive is not None:
    colour, label = positive[positions].astype(float), "anomaly class"
else:
    colour, label = lof, "LOF outlier score"
points = ax.scatter(xy[:, 0], xy[:, 1], c=colour, s=14, cmap="viridis")
ax.scatter(xy[flags, 0], xy[flags, 1], facecolors="none", edgecolors="red", s=60, linewidths=1.2, label="LOF outliers")
for i in np.flatnonzero(flags)[:12]:
    ax.annotate(names[positions[i]], xy[i], fontsize=6)
fig.colorbar(points, ax=ax, label=label)
ax.legend(loc="best", fontsize=7)
ax.set_title(f"DORA atlas: {w.model} {w.rep_layer} on {w.dataset} ({p.atlas['distance']}, UMAP)", fontsize=9)
ax.set_xticks([])
ax.set_yticks([])
with atomic_path(sm.output.atlas) as tmp:
    fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
plt.close(fig)
