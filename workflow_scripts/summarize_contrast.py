"""Rule summarize_contrast: the contrasting tables (concepts paper Sec. 5, Tables 3-4, App. D.3).

tables/contrast_shifting_test.csv: per model x dataset x layer, the paper's Table 3 (see
  `shifting_summary`): per drawn (B, A) pair the mean softmax of A over the images of B, unshifted
  (default_pred) and at the pair's best offset along the (A, B) normal (shifted_pred); *_pred_mean
  over all pairs of a repeat, averaged over the repeats; *_pred_std the std over a repeat's pairs
  (the paper's bracketed std over all samples), averaged over the repeats; *_pred_repeat_std the
  std of the repeat means (the paper's first +-).
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

import pandas as pd
import zarr

from _common import setup
from conceptscope.methods.concept_crops import concept_importance, watermark_summary
from conceptscope.methods.shifting import shifting_summary
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
shift_rows, pair_rows, tests, marks, curves = [], [], [], [], []

for job, shifting, pairs_file, planes, crops_dir in zip(sm.params.jobs, sm.input.shifting, sm.input.pairs, sm.input.hyperplanes, sm.input.tests):
    shifting, crops_dir = Path(shifting), Path(crops_dir)
    shifted = pd.read_csv(shifting / "pairs.csv")
    row = shifting_summary(shifted, pd.read_csv(shifting / "plan.csv"))
    if row:
        shift_rows.append({**job, **row, "n_pairs": len(shifted)})
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
            shares = shares.merge(concept_importance(crops_dir.parent / "components.npz", sm.params.n_concepts),
                                  on=["class", "against", "concept"], how="left")
            shares["shortcut_class"] = shares["class"] == int(shortcut)
            marks.append(shares.assign(**job))

keys = ["model", "dataset", "layer"]
columns = keys + ["default_pred_mean", "shifted_pred_mean", "shifted_pred_std", "default_pred_std", "shifted_pred_repeat_std",
                  "default_pred_repeat_std", "n_start_classes", "n_pairs", "n_repeats", "pairs_per_repeat", "median_best_offset", "mean_pair_accuracy"]
shift_table = pd.DataFrame(shift_rows, columns=columns)[columns]
pair_columns = keys + ["n_classes", "n_pairs", "ordered", "accuracy_mean", "accuracy_median", "accuracy_min", "train_seconds", "device"]
test_columns = keys + ["class", "class_name", "against", "n_concepts", "exclude_target", "target_prob", "against_prob", "predicted", "predicts_target", "status"]
mark_columns = keys + ["class", "against", "n_concepts", "concept", "shortcut_class", "share_overlapping_watermark", "share_showing_half_watermark", "top_m", "importance_share"]
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
    log.info("%s %s %s: default %.3f, shifted %.3f +- %.3f over %d repeats (+- %.3f over pairs)", row["model"], row["dataset"], row["layer"],
             row["default_pred_mean"], row["shifted_pred_mean"], row["shifted_pred_repeat_std"], row["n_repeats"], row["shifted_pred_std"])
