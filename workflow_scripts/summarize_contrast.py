"""Rule summarize_contrast: the contrasting tables (concepts paper Sec. 5, Tables 3-4, App. D.3).

tables/contrast_shifting_test.csv: per model x dataset x layer, the paper's Table 3: mean softmax of
  A for the images of B, unshifted (default_pred) and at the best offset along the (A, B) normal
  (shifted_pred); mean and std over the repeats of the protocol, and (as the paper's parenthesis)
  the std over all images of all drawn pairs.
tables/contrast_pairs.csv: per model x dataset x layer, the pair classifiers: classes, pairs,
  training accuracy (mean, median, min) and training time.
tables/contrast_prediction_test.csv: per contrast pair and variant (crops of any image / excluding
  crops predicted as A), the stitched contrast concepts' softmax of A and of B (paper Table 4).
tables/contrast_watermark.csv: on datasets with a planted shortcut, per contrast pair and concept,
  the share of its top-m crops overlapping / showing at least half of the watermark.
figures/contrast_shifting/{dataset}_{model}.png: mean softmax of A against the offset, per layer
  (paper App. D.3, Figure 12).
"""

from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from _common import setup
from conceptscope.methods.concept_crops import watermark_summary
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
shift_rows, pair_rows, tests, marks, curves = [], [], [], [], []


def pooled_std(means: np.ndarray, stds: np.ndarray, counts: np.ndarray) -> float:
    """Std over all images of several groups, from each group's mean, std and size."""
    total = counts.sum()
    if total == 0:
        return float("nan")
    grand = (counts * means).sum() / total
    return float(np.sqrt(max(0.0, (counts * (stds**2 + means**2)).sum() / total - grand**2)))


for job, shifting, pairs_file, planes, crops_dir in zip(sm.params.jobs, sm.input.shifting, sm.input.pairs, sm.input.hyperplanes, sm.input.tests):
    shifting, crops_dir = Path(shifting), Path(crops_dir)
    pairs = pd.read_csv(shifting / "pairs.csv")
    plan = pd.read_csv(shifting / "plan.csv")
    drawn = plan.merge(pairs, on=["start", "target"], how="inner")
    if len(drawn):
        per_repeat = drawn.groupby("repeat")[["default_pred", "shifted_pred"]].mean()
        row = {**job, "n_start_classes": drawn["start"].nunique(), "n_pairs": len(pairs), "n_repeats": len(per_repeat),
               "pairs_per_repeat": len(drawn) / len(per_repeat), "median_best_offset": drawn["best_offset"].median(),
               "mean_pair_accuracy": drawn["pair_accuracy"].mean()}
        for kind in ("default", "shifted"):
            row[f"{kind}_pred_mean"] = per_repeat[f"{kind}_pred"].mean()
            row[f"{kind}_pred_std"] = per_repeat[f"{kind}_pred"].std(ddof=0)
            row[f"{kind}_pred_sample_std"] = pooled_std(drawn[f"{kind}_pred"].to_numpy(), drawn[f"{kind}_pred_image_std"].to_numpy(), drawn["n_images"].to_numpy())
        shift_rows.append(row)
        offsets = pd.read_csv(shifting / "offsets.csv").groupby("offset")["pred"].mean().reset_index()
        curves.append(offsets.assign(**job))
    trained = pd.read_parquet(pairs_file)
    attrs = dict(zarr.open_group(str(planes), mode="r").attrs)
    pair_rows.append({**job, "n_classes": len(set(trained["class_a"]) | set(trained["class_b"])), "n_pairs": len(trained),
                      "ordered": attrs["ordered"], "accuracy_mean": trained["accuracy"].mean(), "accuracy_median": trained["accuracy"].median(),
                      "accuracy_min": trained["accuracy"].min(), "train_seconds": attrs["seconds"], "device": attrs["device"]})
    test = pd.read_csv(crops_dir / "prediction_test.csv")
    tests.append(test.assign(**job))
    shortcut = sm.params.shortcut_classes.get(job["dataset"])
    if shortcut is not None:
        crops = pd.read_parquet(crops_dir / "top_crops.parquet")
        crops = crops[crops["variant"] == "allowed"]
        if len(crops):
            shares = watermark_summary(crops, Path(sm.input.data[0]).parent, ["class", "against", "n_concepts", "concept"])
            shares["concept"] += 1
            shares["shortcut_class"] = shares["class"] == int(shortcut)
            marks.append(shares.assign(**job))

keys = ["model", "dataset", "layer"]
columns = keys + ["default_pred_mean", "shifted_pred_mean", "shifted_pred_std", "default_pred_std", "default_pred_sample_std",
                  "shifted_pred_sample_std", "n_start_classes", "n_pairs", "n_repeats", "pairs_per_repeat", "median_best_offset", "mean_pair_accuracy"]
shift_table = pd.DataFrame(shift_rows, columns=columns)[columns]
pair_columns = keys + ["n_classes", "n_pairs", "ordered", "accuracy_mean", "accuracy_median", "accuracy_min", "train_seconds", "device"]
test_columns = keys + ["class", "class_name", "against", "n_concepts", "exclude_target", "target_prob", "against_prob", "predicted", "predicts_target", "status"]
mark_columns = keys + ["class", "against", "n_concepts", "concept", "shortcut_class", "share_overlapping_watermark", "share_showing_half_watermark", "top_m"]
outputs = {
    sm.output.shifting: shift_table,
    sm.output.pairs: pd.DataFrame(pair_rows, columns=pair_columns)[pair_columns],
    sm.output.tests: (pd.concat(tests, ignore_index=True) if tests else pd.DataFrame(columns=test_columns)).reindex(columns=test_columns),
    sm.output.watermark: (pd.concat(marks, ignore_index=True) if marks else pd.DataFrame(columns=mark_columns)).reindex(columns=mark_columns),
}
for path, frame in outputs.items():
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

with atomic_path(sm.output.offsets) as tmp:
    tmp.mkdir(parents=True)
    if curves:
        curve = pd.concat(curves, ignore_index=True)
        for (dataset, model), part in curve.groupby(["dataset", "model"], sort=False):
            fig, ax = plt.subplots(figsize=(5, 3.4))
            for layer, line in part.groupby("layer", sort=False):
                ax.plot(line["offset"], line["pred"], marker="o", label=layer)
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set(xlabel="offset along the hyperplane normal", ylabel="mean softmax of A", ylim=(0, 1.02),
                   title=f"Shifting test, {model} on {dataset}\n(concepts paper App. D.3, Figure 12)")
            ax.title.set_fontsize(9)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(tmp / f"{dataset}_{model}.png", dpi=110)
            plt.close(fig)
for row in shift_rows:
    log.info("%s %s %s: default %.3f, shifted %.3f +- %.3f over %d repeats", row["model"], row["dataset"], row["layer"],
             row["default_pred_mean"], row["shifted_pred_mean"], row["shifted_pred_std"], row["n_repeats"])
