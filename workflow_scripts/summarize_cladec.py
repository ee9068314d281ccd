"""Rule summarize_cladec: every ClaDec evaluation into the tables of the paper's layout.

- cladec_layers.csv (Tables 2-3): per model x dataset x layer, the main decoder against the RefAE;
- cladec_alpha.csv (Tables 4-5): the alpha sweep (rec, classifier loss, C_eval accuracy);
- cladec_untrained.csv (Table 6): the decoder of the trained vs the untrained classifier, beside the RefAE;
- cladec_subsets.csv (Sec. 6.4): decoders of the first k channels, reconstruction error overall and per class;
- cladec_occlusion.csv (Tables 7-8): ClaDec and Grad-CAM occlusion accuracies;
- cladec_watermark.csv: per model, layer and reconstructor, the share of the planted watermark its
  reconstructions keep (the shortcut-trained model's decoder should keep it, a clean one's not), the
  per-pixel error inside the watermark box, and that box's error on the clean twin over it on the
  watermarked image (1: the watermark reconstructed as faithfully as the clean pixels there).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from _common import setup
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
main = sm.params.main_variant
NAN = float("nan")


def job_of(path: str) -> dict:
    """dataset, model, layer, variant from .../cladec/{dataset}/{model}/{layer}/{variant}/evaluation.json."""
    parts = Path(path).parts
    return dict(zip(("dataset", "model", "layer", "variant"), parts[-5:-1]))


records = []
for path in sm.input.evaluations:
    records.append({**job_of(path), **json.loads(Path(path).read_text())})
evaluations = pd.DataFrame(records)
keys = ["model", "dataset", "layer"]


def write(frame: pd.DataFrame, path: str, columns: list[str]) -> None:
    frame = frame.reindex(columns=columns) if len(frame) else pd.DataFrame(columns=columns)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def variant(name: str) -> pd.DataFrame:
    return evaluations[evaluations["variant"] == name].set_index(keys) if len(evaluations) else pd.DataFrame()


layers = []
if len(evaluations):
    cladec, refae = variant(main), variant("refae")
    for key, row in cladec.iterrows():
        ref = refae.loc[key]
        layers.append({**dict(zip(keys, key)), "alpha": row["alpha"], "rec_cladec": row["rec"], "rec_refae": ref["rec"],
                       "delta_rec": row["rec"] - ref["rec"], "acc_cladec": row["acc_eval"], "acc_refae": ref["acc_eval"],
                       "delta_acc": row["acc_eval"] - ref["acc_eval"], "classifier_acc": row["classifier_acc"],
                       "classifier_acc_on_cladec": row["classifier_acc_on_reconstructions"], "n_train": row["n_train"],
                       "n_test": row["n_test"], "epochs": row["epochs"], "eval_epochs": row["eval_train"]["epochs"]})
write(pd.DataFrame(layers), sm.output.layers,
      keys + ["alpha", "rec_cladec", "rec_refae", "delta_rec", "acc_cladec", "acc_refae", "delta_acc", "classifier_acc",
              "classifier_acc_on_cladec", "n_train", "n_test", "epochs", "eval_epochs"])

alphas = pd.DataFrame()
if len(evaluations):
    sweep = evaluations[evaluations["variant"].str.startswith("cladec_a")]
    counts = sweep.groupby(keys)["variant"].transform("size")
    alphas = sweep[counts > 1].assign(
        # the table gives Eq. 1's parts on the test images: rec (per pixel, [0, 1] scale) and the classifier's CE
        acc_cladec=lambda f: f["acc_eval"], classifier_acc_on_cladec=lambda f: f["classifier_acc_on_reconstructions"]
    ).sort_values(keys + ["alpha"], ascending=[True, True, True, False])
write(alphas, sm.output.alphas, keys + ["alpha", "rec", "classifier_loss", "classifier_acc_on_cladec", "acc_cladec", "final_train_loss"])

untrained = []
if len(evaluations) and (evaluations["variant"] == "cladec_untrained").any():
    cladec, refae = variant(main), variant("refae")
    for key, row in variant("cladec_untrained").iterrows():
        for name, source in (("untrained", row), ("trained", cladec.loc[key])):
            ref = refae.loc[key]
            untrained.append({**dict(zip(keys, key)), "classifier": name, "classifier_acc": source["classifier_acc"],
                              "rec_cladec": source["rec"], "rec_refae": ref["rec"], "delta_rec": source["rec"] - ref["rec"],
                              "acc_cladec": source["acc_eval"], "acc_refae": ref["acc_eval"], "delta_acc": source["acc_eval"] - ref["acc_eval"]})
write(pd.DataFrame(untrained), sm.output.untrained,
      keys + ["classifier", "classifier_acc", "rec_cladec", "rec_refae", "delta_rec", "acc_cladec", "acc_refae", "delta_acc"])

subsets = []
if len(evaluations):
    for _, row in evaluations[evaluations["variant"].str.startswith("cladec_c") | (evaluations["variant"] == main)].iterrows():
        channels = row["channels"] if isinstance(row["channels"], list) else None
        if channels is None and not (evaluations[(evaluations[keys] == row[keys]).all(axis=1)]["variant"].str.startswith("cladec_c")).any():
            continue  # the full layer is listed only where subsets were decoded
        per_class = row["rec_per_class"]
        subsets.append({**{k: row[k] for k in keys}, "channels": "all" if channels is None else f"{channels[0]}-{channels[1] - 1}",
                        "n_channels": NAN if channels is None else channels[1] - channels[0], "rec": row["rec"],
                        "rec_worst_class": max(per_class, key=per_class.get), "rec_worst": max(per_class.values()),
                        "rec_best_class": min(per_class, key=per_class.get), "rec_best": min(per_class.values()),
                        **{f"rec_class_{c}": v for c, v in sorted(per_class.items(), key=lambda kv: int(kv[0]))}})
subsets = pd.DataFrame(subsets)
write(subsets, sm.output.subsets, list(subsets.columns) if len(subsets) else keys + ["channels", "n_channels", "rec"])

occlusion = []
for path in sm.input.occlusion:
    dataset, model, layer = Path(path).parts[-4:-1]
    frame = pd.read_csv(path).assign(model=model, dataset=dataset, layer=layer)
    occlusion.append(frame)
occlusion = pd.concat(occlusion) if occlusion else pd.DataFrame()
write(occlusion, sm.output.occlusion, keys + ["method", "acc_most_relevant_occluded", "acc_least_relevant_occluded", "delta_acc",
                                              "acc_unoccluded", "n_images", "n_constant_relevance"])

watermark = []
if len(evaluations) and "watermark" in evaluations:
    for _, row in evaluations[evaluations["watermark"].notna()].iterrows():
        w = row["watermark"]
        trained_on = sm.params.train_datasets.get(row["model"])
        watermark.append({**{k: row[k] for k in keys}, "variant": row["variant"],
                          "model_trained_with_shortcut": trained_on in sm.params.shortcut_datasets, **w})
watermark = pd.DataFrame(watermark)
kept = [pd.read_csv(path).assign(**dict(zip(("dataset", "model", "layer"), Path(path).parts[-4:-1])))
        for path in (sm.input.watermark if hasattr(sm.input, "watermark") else [])]
if kept and len(watermark):
    watermark = watermark.merge(pd.concat(kept).drop(columns="n_images"), on=keys + ["variant"], how="left")
write(watermark, sm.output.watermark,
      keys + ["variant", "model_trained_with_shortcut", "watermark_kept", "watermark_kept_shortcut_class", "watermark_kept_other_classes",
              "box_error_clean_over_marked", "box_error_clean_over_marked_shortcut_class", "box_error_clean_over_marked_other_classes",
              "box_error", "box_error_vs_clean", "outside_error", "box_error_shortcut_class", "box_error_other_classes", "n_images"])
log.info("%d evaluations: %d layer rows, %d sweep rows, %d occlusion rows, %d watermark rows", len(evaluations), len(layers),
         len(alphas), len(occlusion), len(watermark))
