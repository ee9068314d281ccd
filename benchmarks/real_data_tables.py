"""Keep the real-data run's paper tables in the repository, with where each one came from.

    .venv/bin/snakemake results-real/tables/concepts_prediction_test.csv --configfile configs/real-data.yaml --cores all
    .venv/bin/python benchmarks/real_data_tables.py collect [TABLE ...]   # copy the run's tables
    .venv/bin/python benchmarks/real_data_tables.py findings             # print our side of docs/evaluation.md

`collect` copies each named table (default: each of TABLES and SHORTCUT_TABLES the run has written) from
`results-real/tables/` to `benchmarks/results/real-data/tables/` and records in `provenance.json`,
per table: the commit of the code, whether the code or the config had uncommitted changes, the
sha256 of the config, the command that makes the table, the UTC time and the rows. It refuses a
table written before the last commit that touched the code or the config (a table from older code).

`findings` reads the kept tables and prints, per paper finding, our figures as markdown rows (the
"ours" column of docs/evaluation.md); a table not kept yet prints as missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/real-data.yaml"
KEPT = ROOT / "benchmarks" / "results" / "real-data" / "tables"
# the paper tables of issue #29's evaluation; the run writes them to <results>/tables/
TABLES = (
    "concepts_prediction_test.csv",
    "contrast_shifting_test.csv",
    "cladec_layers.csv",
    "cladec_alpha.csv",
    "nave_object_extraction.csv",
    "dora_mantel.csv",
    "dora_anomaly.csv",
    "cluscam_faithfulness.csv",
)
# kept beside them: what each method's real-data study says about the planted shortcut (the digits
# with a watermark on the training 0s: the shortcut-trained models against their clean twins)
SHORTCUT_TABLES = ("nave_watermark.csv", "dora_probing.csv", "cladec_watermark.csv", "cluscam_watermark.csv")
CODE = ("src", "rules", "workflow_scripts", "Snakefile", "schemas", CONFIG)
# kept beside concepts_prediction_test.csv: the test per class at the figure's n, with the model's
# top-1 accuracy on the class's images (what the test can expect of the data)
CLASSES_TABLE = "concepts_prediction_test_classes.csv"
FIGURE_N = 4  # the n of the paper's Tables 1-2 (`concepts.n_concepts` of configs/real-data.yaml)
# kept beside cluscam_faithfulness.csv: ClusCAM minus each baseline, image by image on the images both ran on
PAIRED_TABLE = "cluscam_paired.csv"
# the faithfulness metrics, each with whether a lower value is better
FAITHFULNESS = {"deletion_auc": True, "insertion_auc": False, "average_drop": True, "increase_in_confidence": False}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def code_state() -> dict:
    dirty = git("status", "--porcelain", "--", *CODE)
    return {
        "commit": git("rev-parse", "HEAD"),
        "code_or_config_uncommitted": bool(dirty),
        "config_sha256": hashlib.sha256((ROOT / CONFIG).read_bytes()).hexdigest(),
        "last_code_commit_time": int(git("log", "-1", "--format=%ct", "--", *CODE)),
    }


def collect(names: list[str], results: Path) -> None:
    state = code_state()
    provenance_file = KEPT / "provenance.json"
    provenance = json.loads(provenance_file.read_text()) if provenance_file.exists() else {}
    KEPT.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = results / "tables" / name
        if not source.exists():
            print(f"{name}: not in {source.parent} (run: .venv/bin/snakemake {source.relative_to(ROOT) if source.is_relative_to(ROOT) else source} "
                  f"--configfile {CONFIG} --cores all)", file=sys.stderr)
            continue
        written = source.stat().st_mtime
        if written < state["last_code_commit_time"]:
            sys.exit(f"{name}: written before the last commit that changed {', '.join(CODE)}; rerun its target first")
        shutil.copyfile(source, KEPT / name)
        table = pd.read_csv(source)
        provenance[name] = {
            "commit": state["commit"],
            "code_or_config_uncommitted": state["code_or_config_uncommitted"],
            "config": CONFIG,
            "config_sha256": state["config_sha256"],
            "command": f".venv/bin/snakemake results-real/tables/{name} --configfile {CONFIG} --cores all",
            "table_written_utc": datetime.fromtimestamp(written, timezone.utc).isoformat(timespec="seconds"),
            "rows": len(table),
        }
        print(f"{name}: {provenance[name]['rows']} rows kept")
        if name == "concepts_prediction_test.csv":
            classes = per_class_tests(table, results)
            classes.to_csv(KEPT / CLASSES_TABLE, index=False)
            provenance[CLASSES_TABLE] = {**provenance[name], "rows": len(classes), "made_from": name}
        if name == "cluscam_faithfulness.csv":
            paired = cluscam_paired(table, results)
            paired.to_csv(KEPT / PAIRED_TABLE, index=False)
            provenance[PAIRED_TABLE] = {**provenance[name], "rows": len(paired), "made_from": name}
    provenance_file.write_text(json.dumps(dict(sorted(provenance.items())), indent=2) + "\n")


def cluscam_paired(table: pd.DataFrame, results: Path) -> pd.DataFrame:
    """Per model x dataset x layer x baseline x metric: the mean of ClusCAM's value minus the
    baseline's over the images both methods ran on, its standard error and the number of images
    (a paired comparison: the images' own difficulty cancels)."""
    rows = []
    for job in table[["model", "dataset", "layer"]].drop_duplicates().itertuples(index=False):
        folder = results / "cluscam" / job.dataset / job.model / job.layer
        ours = pd.read_csv(folder / "cluscam" / "per_image.csv").set_index("image_id")
        same_job = (table["model"] == job.model) & (table["dataset"] == job.dataset) & (table["layer"] == job.layer)
        for baseline in table.loc[same_job, "method"].unique():
            if baseline == "cluscam":
                continue
            other = pd.read_csv(folder / baseline / "per_image.csv").set_index("image_id")
            both = ours.index.intersection(other.index)
            for metric in FAITHFULNESS:
                difference = ours.loc[both, metric] - other.loc[both, metric]
                rows.append({**job._asdict(), "baseline": baseline, "metric": metric, "images": len(both),
                             "cluscam_minus_baseline": difference.mean(), "sem": difference.sem()})
    return pd.DataFrame(rows)


def per_class_tests(table: pd.DataFrame, results: Path, n_concepts: int = FIGURE_N) -> pd.DataFrame:
    """Per model x dataset x layer x class x variant at `n_concepts`: the stitched image's softmax of
    the class, whether it is the argmax, and the model's top-1 accuracy on the class's labelled
    images of the dataset (all splits)."""
    jobs = table[["model", "dataset", "layer"]].drop_duplicates()
    parts = []
    for job in jobs.itertuples(index=False):
        tests = pd.read_csv(results / "concepts" / job.dataset / job.model / job.layer / "crops" / "prediction_test.csv")
        tests = tests[tests["n_concepts"] == n_concepts]
        predictions = pd.read_parquet(results / "predictions" / job.dataset / f"{job.model}.parquet", columns=["label", "pred"])
        accuracy = (predictions["pred"] == predictions["label"]).groupby(predictions["label"]).mean().rename("class_top1")
        tests = tests.merge(accuracy, left_on="class", right_index=True, how="left")
        parts.append(tests.assign(model=job.model, dataset=job.dataset, layer=job.layer))
    columns = ["model", "dataset", "layer", "class", "n_concepts", "exclude_target", "target_prob", "predicted", "predicts_target", "status", "class_top1"]
    return pd.concat(parts)[columns]


def kept(name: str) -> pd.DataFrame | None:
    path = KEPT / name
    return pd.read_csv(path) if path.exists() else None


def concepts_findings() -> list[str]:
    table = kept("concepts_prediction_test.csv")
    if table is None:
        return ["prediction test: concepts_prediction_test.csv not kept yet"]
    lines = ["| model | dataset | layer | classes | n | allowing target crops: % / avg pred | excluding them: % / avg pred |", "|---|---|---|---|---|---|---|"]
    figure = table[table["n_concepts"] == FIGURE_N]
    for (model, dataset, layer), part in figure.groupby(["model", "dataset", "layer"], sort=False):
        cells = {}
        for exclude, row in part.set_index("exclude_target").iterrows():
            cells[bool(exclude)] = f"{row['pct_target']:.1f} % / {row['avg_pred']:.3f}"
        lines.append(f"| {model} | {dataset} | {layer} | {int(part['n_classes'].iloc[0])} | {FIGURE_N} | {cells.get(False, '-')} | {cells.get(True, '-')} |")
    classes = kept(CLASSES_TABLE)
    if classes is None:
        return lines
    lines += ["", f"By the model's top-1 accuracy on the class's images (n = {FIGURE_N}; classes without concepts count as failures):", "",
              "| model | dataset | layer | class top-1 | classes | allowing: % | excluding: % |", "|---|---|---|---|---|---|---|"]
    classes["band"] = pd.cut(classes["class_top1"], [-0.01, 0.25, 0.5, 1.0], labels=["0-25 %", "25-50 %", "50-100 %"])
    for (model, dataset, layer, band), part in classes.groupby(["model", "dataset", "layer", "band"], observed=True):
        rate = part.groupby("exclude_target")["predicts_target"].mean() * 100
        lines.append(f"| {model} | {dataset} | {layer} | {band} | {part['class'].nunique()} | {rate.get(False, float('nan')):.1f} | {rate.get(True, float('nan')):.1f} |")
    return lines


def contrast_findings() -> list[str]:
    table = kept("contrast_shifting_test.csv")
    if table is None:
        return ["shifting test: contrast_shifting_test.csv not kept yet"]
    lines = ["| model | layer | default pred | shifted pred | pairs |", "|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.model} | {row.layer} | {row.default_pred_mean:.3f} | {row.shifted_pred_mean:.3f} | {row.n_pairs} |")
    return lines


def markdown(frame: pd.DataFrame, digits: int = 3) -> list[str]:
    """A data frame as markdown table rows (floats rounded to `digits`)."""
    cells = frame.map(lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v))
    return ["| " + " | ".join(map(str, cells.columns)) + " |", "|" + "---|" * len(cells.columns),
            *("| " + " | ".join(row) + " |" for row in cells.itertuples(index=False))]


def not_kept(name: str) -> list[str]:
    return [f"{name} not kept yet"]


def cladec_findings() -> list[str]:
    layers, alphas = kept("cladec_layers.csv"), kept("cladec_alpha.csv")
    lines = not_kept("cladec_layers.csv") if layers is None else markdown(
        layers[["model", "layer", "rec_cladec", "rec_refae", "delta_rec", "acc_cladec", "acc_refae", "delta_acc", "classifier_acc", "eval_epochs"]])
    lines.append("")
    lines += not_kept("cladec_alpha.csv") if alphas is None else markdown(alphas[["model", "layer", "alpha", "rec", "classifier_loss", "acc_cladec"]])
    watermark = kept("cladec_watermark.csv")
    if watermark is not None and len(watermark):
        pivot = watermark.pivot_table(index=["layer", "variant"], columns="model", values="watermark_kept", sort=False)
        lines += ["", "Share of the planted watermark the reconstructions keep (watermarked test images), per model:", "",
                  *markdown(pivot.reset_index())]
    return lines


def nave_findings() -> list[str]:
    """Object extraction on the boxed images with the paper's settings (per image, k-means at the
    figures' K; the baselines at the same segment count) and the class-wide clustering: AP@50 per
    box strategy over all images and over the small objects; then the watermark coverage of the
    shortcut and clean twins."""
    table = kept("nave_object_extraction.csv")
    if table is None:
        return not_kept("nave_object_extraction.csv")
    k = int(table.loc[table["method"] == "nave", "k"].iloc[0])
    paper = ((table["method"] == "nave") & (table["clustering"] == "kmeans") & (table["k"] == k)) | (table["method"] == "nave_classwide")
    baselines = table["method"].isin(["slic", "felzenszwalb"]) & ((table["k"] == k) | table["k"].isna())
    rows = table[paper | baselines].assign(layers=lambda f: f["layers"].fillna("-"), model=lambda f: f["model"].where(paper, "-"),
                                           method=lambda f: f["method"] + " K=" + f["k"].map(lambda v: "-" if pd.isna(v) else str(int(v))))
    rows = rows.drop_duplicates(["dataset", "model", "layers", "method", "strategy"])
    pivot = rows.pivot_table(index=["dataset", "model", "layers", "method"], columns="strategy", values=["ap50", "ap50_small_objects"], sort=False)
    pivot.columns = [f"{strategy} {'small objects' if value != 'ap50' else 'all'}" for value, strategy in pivot.columns]
    small = rows.groupby("dataset")["n_small_objects"].max().to_dict()
    images = rows.groupby("dataset")["n_images"].max().to_dict()
    lines = [f"AP@50 (images with boxes: {images}; small objects: {small}):", "", *markdown(pivot.reset_index())]
    watermark = kept("nave_watermark.csv")
    if watermark is not None and len(watermark):
        watermark = watermark[((watermark["method"] == "nave") & (watermark["k"] == k)) | (watermark["method"] == "nave_classwide")]
        watermark = watermark.assign(method=watermark["method"] + " K=" + watermark["k"].astype(int).astype(str) + " (" + watermark["n_images"].astype(str) + " images)")
        pivot = watermark.pivot_table(index=["model", "layers", "method", "clustering"], columns="strategy", values="covered_rate", sort=False)
        lines += ["", "Share of the watermarked digit test images on which a NAVE segment covers the watermark (IoU > 0.5):", "",
                  *markdown(pivot.reset_index())]
    return lines


def dora_findings() -> list[str]:
    """Mantel r averaged over the WordNet baselines (the paper's Table 1 cell); the anomaly AUC per
    distance and detector (Table 3); the best watermark probes and where the detectors rank them."""
    mantel, anomaly, probing = kept("dora_mantel.csv"), kept("dora_anomaly.csv"), kept("dora_probing.csv")
    lines = []
    if mantel is None:
        lines += not_kept("dora_mantel.csv")
    else:
        mantel = mantel.assign(column=mantel["distance"] + mantel["mode"].fillna("").map(lambda m: f" {m}" if m else ""))
        cells = mantel.groupby(["model", "column"], sort=False).agg(r=("mantel_r", "mean"), p=("p_value", "max"), k=("n_representations", "first"))
        lines += ["Mantel r (mean over the WordNet baselines; largest p):", "",
                  *markdown(cells["r"].unstack("column").reset_index())]
        lines.append(f"largest p: {cells['p'].max():.4f}; representations: {sorted(cells['k'].unique().tolist())}")
    lines.append("")
    if anomaly is None:
        lines += not_kept("dora_anomaly.csv")
    else:
        anomaly = anomaly.assign(distance=anomaly["distance"] + anomaly["mode"].fillna("").map(lambda m: f" {m}" if m else ""))
        pivot = anomaly.pivot_table(index=["model", "distance"], columns="detector", values="auc", sort=False)
        pivot["mean"] = pivot.mean(axis=1)
        lines += ["Anomaly AUC of the 10 digit logits:", "", *markdown(pivot.reset_index())]
    if probing is not None and len(probing):
        best = probing[probing["auc_rank"] == 1]
        best = best.assign(probe=best["name"] + " (AUC " + best["probing_auc"].round(3).astype(str) + ")",
                           distance=best["distance"] + best["mode"].fillna("").map(lambda m: f" {m}" if m else "")
                           + " (of " + best["n_representations"].astype(str) + ")")
        pivot = best.pivot_table(index=["model", "probe", "distance"], columns="detector", values="outlier_rank", sort=False)
        lines += ["", "The outlier rank (1 = most outlying, of the representations the distance covers) of each model's best watermark probe:", "",
                  *markdown(pivot.astype(int).reset_index())]
    return lines


def cluscam_findings() -> list[str]:
    """Faithfulness per method on the images every method ran on (subset `costly`), with each
    method's rank per metric; then the saliency mass in the watermark box."""
    table = kept("cluscam_faithfulness.csv")
    if table is None:
        return not_kept("cluscam_faithfulness.csv")
    lines = []
    for subset in ("costly", "main"):
        part = table[table["subset"] == subset].copy()
        if not len(part):
            continue
        groups = part.groupby(["model", "dataset", "layer"], sort=False)
        for metric, ascending in FAITHFULNESS.items():
            part[f"{metric}_rank"] = groups[metric].rank(ascending=ascending, method="min").astype(int)
        part["mean_rank"] = part[[f"{m}_rank" for m in FAITHFULNESS]].mean(axis=1)
        lines += [f"subset `{subset}`:", "", *markdown(part[["model", "dataset", "method", "images", *FAITHFULNESS, "mean_rank"]]), ""]
    paired = kept(PAIRED_TABLE)
    if paired is not None:
        wide = paired.assign(value=[f"{d:+.3f} ± {e:.3f}" for d, e in zip(paired["cluscam_minus_baseline"], paired["sem"])])
        wide = wide.pivot(index=["model", "dataset", "baseline", "images"], columns="metric", values="value")
        lines += ["ClusCAM minus each baseline, image by image (mean ± standard error; lower deletion and average",
                  "drop, higher insertion and increase in confidence are better for ClusCAM):", "",
                  *markdown(wide.reset_index()[["model", "dataset", "baseline", "images", *FAITHFULNESS]]), ""]
    watermark = kept("cluscam_watermark.csv")
    if watermark is not None and len(watermark):
        lines += ["Saliency mass in the watermark box over the box's share of the frame (watermarked digits):", "",
                  *markdown(watermark[["model", "method", "images", "mass_in_box", "box_fraction", "ratio"]])]
    return lines


FINDINGS = {"(1)-(2) concepts prediction test by layer": concepts_findings, "(3) shifting test": contrast_findings,
            "(4)-(5) ClaDec layers and alpha": cladec_findings, "(6) NAVE object extraction": nave_findings,
            "(7)-(8) DORA Mantel test and anomalies": dora_findings, "(9) ClusCAM faithfulness": cluscam_findings}


def findings() -> None:
    for title, make in FINDINGS.items():
        print(f"### {title}\n")
        print("\n".join(make()) + "\n")
    missing = [name for name in TABLES if not (KEPT / name).exists()]
    if missing:
        print("not kept yet: " + ", ".join(missing))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    take = sub.add_parser("collect", help="copy the run's tables into benchmarks/results/real-data/tables/")
    take.add_argument("tables", nargs="*", help=f"table file names (default: {', '.join(TABLES + SHORTCUT_TABLES)})")
    take.add_argument("--results", type=Path, default=ROOT / "results-real", help="the run's results folder")
    sub.add_parser("findings", help="print our figures per paper finding from the kept tables")
    args = parser.parse_args()
    if args.command == "collect":
        unknown = [name for name in args.tables if name not in TABLES + SHORTCUT_TABLES]
        if unknown:
            parser.error(f"unknown table(s) {unknown}; expected some of {list(TABLES + SHORTCUT_TABLES)}")
        collect(args.tables or list(TABLES + SHORTCUT_TABLES), args.results)
    else:
        findings()


if __name__ == "__main__":
    main()
