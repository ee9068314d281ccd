"""Rule concept_crops: show each class's concepts with crops and run the prediction test (Sec. 4.2-4.3).

Writes into the output directory:
  top_crops.parquet   per class, n, variant (allowed / excluding the class), concept and rank:
                      the crop (pool, row, image, box), its cosine score, the model's predictions
                      for its image, for the crop alone as retrieved (crop_pred, `crops` mode: resized
                      to the input size) and as it appears in the stitched image (stitched_pred), and
                      whether it overlaps a watermark box
  prediction_test.csv per class, n and variant: the stitched image's softmax for the class, the
                      argmax class, and whether it is the class
  figures/<class>.png the concepts of the figure's n, allowed and excluded panels (Figures 5-8)

The excluded variant drops every crop the model predicts as the class, as retrieved or as stitched
(`search_pools` with a `StitchedCropClassifier`; with `concepts.exclude_images` also every crop of
an image predicted as it): the one-concept stitched image is then never predicted as the class, as
the paper's Figure 4 says.

Contrast concepts (components.npz with `against`: why A rather than B, paper Sec. 5.1.2) run
through the same steps, per [A, B] row: the tables gain `against` and `against_prob` (the stitched
image's softmax of B, paper Table 4) and figures are named class_<A>_vs_<B>.png.
"""

import time
from pathlib import Path

import numpy as np
import pandas as pd

from _common import job_model_and_data, setup
from conceptscope.methods.concept_crops import CropPool, StitchedCropClassifier, concept_figure, hit_records, search_pools, stitch_hits
from conceptscope.methods.prediction_test import prediction_test, stitch_transform
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
opts = sm.params.concepts
model, info, data, device = job_model_and_data(sm)
layer = sm.wildcards.layer
saved = np.load(sm.input.components)
classes = saved["classes"]
against = saved["against"] if "against" in saved.files else None
sizes = sorted({opts["n_concepts"], *opts["sweep"]})
preprocess = info["preprocess"]
input_size = preprocess.get("input_size") or preprocess.get("resize")
stitch_size = opts["stitch_size"] or max(1, int(input_size) // max(sm.params.grids))
transform = stitch_transform(preprocess)
stitched = StitchedCropClassifier(model, transform, stitch_size)  # the crops as the prediction test sees them
pools = [
    CropPool.open(name, d, c, i, p, layer)
    for name, d, c, i, p in zip(sm.params.pools, sm.input.pool_data, sm.input.pool_crops, sm.input.pool_index, sm.input.pool_predictions)
]
log.info(
    "%s/%s/%s: %d classes, n = %s, pools %s (%s crops), stitched crops %d px",
    sm.wildcards.dataset, sm.wildcards.model, layer, len(classes), sizes, [p.name for p in pools], [len(p) for p in pools], stitch_size,
)
variants = {"allowed": None, "excluded": True}


def class_name(c: int) -> str:
    return data.classes[c] if c < len(data.classes) else str(c)

crops, tests = [], []
started = time.perf_counter()
out = Path(sm.output[0])
with atomic_path(out) as tmp:
    (tmp / "figures").mkdir(parents=True)
    n_figures = 0
    for k, target in enumerate(int(c) for c in classes):
        pair = {} if against is None else {"against": int(against[k])}
        for n in sizes:
            vectors = saved[f"components_n{n}"][k] if saved[f"components_n{n}"].shape[2] else None
            if vectors is None or np.isnan(vectors).any():  # no concepts (classes.csv says why): a failed test
                for exclude in (False, True):
                    tests.append({"class": target, **pair, "n_concepts": n, "exclude_target": exclude, "target_prob": 0.0, "predicted": -1,
                                  "predicts_target": False, "status": "no concepts"})
                continue
            panels = {}
            for variant, exclude in variants.items():
                hits = search_pools(pools, vectors, opts["top_m"], exclude_target=target if exclude else None, exclude_images=opts["exclude_images"],
                                    one_per_image=opts["one_per_image"], stitched=stitched)
                panels[variant] = hits
                frame = hit_records(pools, hits, stitched)
                crops.append(frame.assign(**{"class": target, **pair, "n_concepts": n, "variant": variant}))
                image = stitch_hits(pools, hits, stitch_size)
                row = {"class": target, **pair, "n_concepts": n, "exclude_target": exclude is not None}
                if image is None:
                    tests.append({**row, "target_prob": 0.0, "predicted": -1, "predicts_target": False, "status": "a concept has no admissible crop"})
                    continue
                verdict = prediction_test(model, transform, image, target)
                if pair:
                    row["against_prob"] = float(verdict.probs[0][pair["against"]])
                tests.append(
                    {**row, "target_prob": float(verdict.target_prob[0]), "predicted": int(verdict.predicted[0]),
                     "predicts_target": bool(verdict.predicts_target[0]), "status": "ok"}
                )
            if n == opts["n_concepts"] and (opts["max_figures"] is None or n_figures < opts["max_figures"]):
                name = class_name(target)
                title, stem = f"class {target} ({name})", f"class_{target:04d}"
                if pair:
                    title, stem = f"{title} rather than {pair['against']} ({class_name(pair['against'])})", f"{stem}_vs_{pair['against']:04d}"
                figure = concept_figure(
                    pools,
                    {"crops of any image": panels["allowed"], f"excluding crops predicted as {name}": panels["excluded"]},
                    saved[f"importance_n{n}"][k],
                    title=f"{sm.wildcards.model} {layer}: {title}",
                )
                figure.save(tmp / "figures" / f"{stem}.png")
                n_figures += 1
    elapsed = time.perf_counter() - started
    columns = ["class", "n_concepts", "variant", "concept", "rank"] if against is None else ["class", "against", "n_concepts", "variant", "concept", "rank"]
    crop_table = pd.concat(crops, ignore_index=True) if crops else pd.DataFrame(columns=columns)
    crop_table = crop_table[columns + [c for c in crop_table.columns if c not in columns]]
    crop_table.to_parquet(tmp / "top_crops.parquet", index=False)
    test_columns = ["class", "n_concepts", "exclude_target", "target_prob", "predicted", "predicts_target", "status"]
    if against is not None:
        test_columns[1:1] = ["against"]
        test_columns.insert(test_columns.index("target_prob") + 1, "against_prob")
    test_table = pd.DataFrame(tests, columns=test_columns)
    test_table.insert(1, "class_name", test_table["class"].map(class_name))
    test_table.to_csv(tmp / "prediction_test.csv", index=False)
    (tmp / "timing.json").write_text(f'{{"seconds": {elapsed:.3f}, "classes": {len(classes)}}}\n')
main = test_table[test_table["n_concepts"] == opts["n_concepts"]]
for exclude, part in main.groupby("exclude_target"):
    log.info("n=%d, %s: predicts the class for %.1f%% of %d classes (mean softmax %.3f)",
             opts["n_concepts"], "excluding" if exclude else "allowing", 100 * part["predicts_target"].mean(), len(part), part["target_prob"].mean())
log.info("crops, figures and tests for %d classes in %.1f s", len(classes), elapsed)
