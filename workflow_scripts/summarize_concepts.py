"""Rule summarize_concepts: the prediction-test table (paper Tables 1-2, Figure 4) and the watermark measure.

tables/concepts_prediction_test.csv: per model x dataset x layer x n x variant, avg_pred (mean
softmax of the class for its stitched explanation image) and pct_target (% of classes for which it
is the argmax), over every explained class (a class without concepts counts as a failure).
figures/concepts_sweep/{dataset}_{model}.png: the paper's Figure 4 layout, avg_pred and pct_target
against n, one line per layer (solid: excluding crops predicted as the class; dashed: allowing them).
tables/concepts_watermark.csv: for datasets with a planted shortcut, per class and concept (figure
n, crops allowed from any image), the share of its top-m crops whose box overlaps the watermark
box recorded for the crop's image (any overlap), the share that show at least half of the
watermark's area, the concept's share of its class's NMF importance, and whether the class is the
shortcut class.
"""

from pathlib import Path

import pandas as pd

from _common import setup
from conceptscope.methods.concept_crops import concept_importance, watermark_summary
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
rows, marks = [], []
for job, folder in zip(sm.params.jobs, sm.input.tests):
    folder = Path(folder)
    tests = pd.read_csv(folder / "prediction_test.csv")
    for (n, exclude), part in tests.groupby(["n_concepts", "exclude_target"], sort=True):
        rows.append({
            **job,
            "attribution": sm.params.attribution,
            "n_concepts": int(n),
            "exclude_target": bool(exclude),
            "avg_pred": part["target_prob"].mean(),
            "pct_target": 100.0 * part["predicts_target"].mean(),
            "n_classes": len(part),
            "n_without_concepts": int((part["status"] == "no concepts").sum()),
        })
    shortcut = sm.params.shortcut_classes.get(job["dataset"])
    if shortcut is None:
        continue
    crops = pd.read_parquet(folder / "top_crops.parquet")
    crops = crops[(crops["variant"] == "allowed") & (crops["n_concepts"] == sm.params.n_concepts)]
    shares = watermark_summary(crops, Path(sm.input.data[0]).parent, ["class", "n_concepts", "concept"])
    shares["concept"] = shares["concept"].astype(int) + 1
    shares = shares.merge(concept_importance(folder.parent / "components.npz", sm.params.n_concepts), on=["class", "concept"], how="left")
    for record in shares.to_dict("records"):
        marks.append({**job, **record, "class": int(record["class"]), "n_concepts": int(record["n_concepts"]),
                      "concept": int(record["concept"]), "shortcut_class": int(record["class"]) == int(shortcut)})
table = pd.DataFrame(rows, columns=["dataset", "model", "layer", "attribution", "n_concepts", "exclude_target", "avg_pred", "pct_target", "n_classes", "n_without_concepts"])
table = table[["model", "dataset", "layer", "attribution", "n_concepts", "exclude_target", "avg_pred", "pct_target", "n_classes", "n_without_concepts"]]
with atomic_path(sm.output.table) as tmp:
    table.to_csv(tmp, index=False)
columns = ["model", "dataset", "layer", "n_concepts", "class", "concept", "shortcut_class", "share_overlapping_watermark", "share_showing_half_watermark", "top_m", "importance_share"]
watermark = pd.DataFrame(marks, columns=columns)[columns]
with atomic_path(sm.output.watermark) as tmp:
    watermark.to_csv(tmp, index=False)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = Path(sm.output.sweep)
with atomic_path(out) as tmp:
    tmp.mkdir(parents=True)
    for (dataset, model), part in table.groupby(["dataset", "model"], sort=False):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for i, (layer, lines) in enumerate(part.groupby("layer", sort=False)):
            colour = f"C{i}"
            for exclude, line in lines.groupby("exclude_target"):
                style = "-" if exclude else "--"
                line = line.sort_values("n_concepts")
                axes[0].plot(line["n_concepts"], line["avg_pred"], style, color=colour, marker="o", label=f"{layer}" if exclude else None)
                axes[1].plot(line["n_concepts"], line["pct_target"], style, color=colour, marker="o")
        for ax in axes:
            ax.set_xticks(sorted(part["n_concepts"].unique()))
        axes[0].set(xlabel="n (NMF components)", ylabel="average prediction of the class", ylim=(0, 1.02))
        axes[1].set(xlabel="n (NMF components)", ylabel="% predicts the class", ylim=(0, 102))
        axes[0].legend(fontsize=8, title="solid: excluding class crops\ndashed: allowing them", title_fontsize=7)
        fig.suptitle(f"Prediction test, {model} on {dataset} (concepts paper Figure 4)", fontsize=10)
        fig.tight_layout()
        fig.savefig(tmp / f"{dataset}_{model}.png", dpi=110)
        plt.close(fig)
for (model, layer), part in watermark.groupby(["model", "layer"], sort=False):
    best = part[part["shortcut_class"]]["share_overlapping_watermark"].max()
    other = part[~part["shortcut_class"]].groupby("class")["share_overlapping_watermark"].max().mean()
    log.info("%s %s: best shortcut-class concept %.2f of top crops on the watermark; other classes' best concept %.2f on average", model, layer, best, other)
log.info("%d prediction-test rows, %d watermark rows", len(table), len(watermark))
