"""The kept real-data tables (benchmarks/results/real-data/tables/): each one traceable, and the
evaluation's claims about them hold (docs/evaluation.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "benchmarks" / "results" / "real-data" / "tables"
sys.path.insert(0, str(ROOT / "benchmarks"))
from real_data_tables import CLASSES_TABLE, PAIRED_TABLE, SHORTCUT_TABLES, TABLES  # noqa: E402

REAL_MODELS = {"mobilenet_v2", "efficientnet_lite0"}


def kept_tables() -> list[str]:
    return sorted(p.name for p in KEPT.glob("*.csv"))


def test_every_kept_table_has_its_provenance():
    provenance = json.loads((KEPT / "provenance.json").read_text())
    assert kept_tables(), "no real-data table is kept"
    assert set(kept_tables()) <= {*TABLES, *SHORTCUT_TABLES, CLASSES_TABLE, PAIRED_TABLE}
    for name in kept_tables():
        record = provenance[name]
        made_from = record.get("made_from", name)
        assert record["rows"] == len(pd.read_csv(KEPT / name)), name
        assert not record["code_or_config_uncommitted"], f"{name} was made from uncommitted code or config"
        assert subprocess.run(["git", "cat-file", "-e", f"{record['commit']}^{{commit}}"], cwd=ROOT).returncode == 0, name
        assert record["command"].endswith(f"results-real/tables/{made_from} --configfile configs/real-data.yaml --cores all")


def test_the_prediction_test_covers_both_models_and_200_classes():
    if not (KEPT / "concepts_prediction_test.csv").exists():
        pytest.skip("concepts_prediction_test.csv not kept")
    table = pd.read_csv(KEPT / "concepts_prediction_test.csv")
    assert set(table["model"]) == REAL_MODELS
    strict = table[table["exclude_target"].astype(bool) & (table["dataset"] == "tiny_imagenet_200")]
    assert set(strict["model"]) == REAL_MODELS and (strict["n_classes"] >= 200).all()
    # every model x dataset x layer has both variants at every n of the sweep
    counts = table.groupby(["model", "dataset", "layer", "n_concepts"])["exclude_target"].nunique()
    assert (counts == 2).all()


@pytest.mark.parametrize("name", ["contrast_shifting_test.csv", "nave_object_extraction.csv", "dora_mantel.csv", "cluscam_faithfulness.csv"])
def test_ImageNet_tables_have_both_real_models(name):
    if not (KEPT / name).exists():
        pytest.skip(f"{name} not kept")
    models = set(pd.read_csv(KEPT / name)["model"].str.replace("_dora", ""))
    assert REAL_MODELS <= models


def test_findings_print_from_the_kept_tables():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_data_tables.py"), "findings"], capture_output=True, text=True, check=True).stdout
    for name in kept_tables():
        assert f"{name} not kept yet" not in out


def test_cluscam_paired_differences_follow_the_means():
    """On the images every method ran on, the paired mean difference is the difference of the means."""
    if not (KEPT / PAIRED_TABLE).exists():
        pytest.skip(f"{PAIRED_TABLE} not kept")
    paired = pd.read_csv(KEPT / PAIRED_TABLE)
    means = pd.read_csv(KEPT / "cluscam_faithfulness.csv").set_index(["model", "dataset", "subset", "method"])
    assert set(paired["baseline"]) == {"gradcam", "scorecam", "ablationcam", "rise", "occlusion"}
    for row in paired.itertuples(index=False):
        subset = "main" if row.images == means.loc[(row.model, row.dataset, "main", "cluscam"), "images"] else "costly"
        expected = means.loc[(row.model, row.dataset, subset, "cluscam"), row.metric] - means.loc[(row.model, row.dataset, subset, row.baseline), row.metric]
        assert abs(row.cluscam_minus_baseline - expected) < 1e-9, row
