"""End-to-end on a transformer: configs/test-vit.yaml (a 2-block ViT with 2 register tokens, one
epoch on real digits) through all five methods with Snakemake; each method's tables hold the ViT's
rows, read at the token layers' 7x7 patch maps or the class token."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import run_tiny_config


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vit_pipeline")
    # every method's tables (not the report's pages, which the tiny CNN run checks)
    tables = ["concepts_watermark", "contrast_pairs", "cladec_layers", "nave_object_extraction", "dora_outliers", "cluscam_faithfulness"]
    run, config = run_tiny_config(workdir, "test-vit.yaml", targets=tuple(f"tables/{name}.csv" for name in tables))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return workdir / "results", config


def test_stores_hold_the_patch_maps(vit_run):
    from conceptscope.store import open_activations

    results, _ = vit_run
    # dim 32, MLP ratio 2: the hidden layer is 64 wide; every token layer is stored as its 7x7 patch map
    assert open_activations(results, "digits_shortcut", "vit_clean", "blocks.0.mlp.act")["activations"].shape[1:] == (64, 7, 7)
    assert open_activations(results, "digits_shortcut", "vit_clean", "blocks.1.norm1")["activations"].shape[1:] == (32, 7, 7)
    info = yaml.safe_load((results / "models" / "vit_clean" / "model.json").read_text())
    assert info["arch_options"] == {"depth": 2, "dim": 32, "heads": 2, "registers": 2}


def test_every_method_has_the_vits_rows(vit_run):
    results, _ = vit_run
    tables = {p.stem: pd.read_csv(p) for p in (results / "tables").glob("*.csv")}
    assert "shortcut_summary" not in tables  # only the methods' tables were asked for
    expected = {
        "concepts_watermark": "blocks.0.mlp.act", "contrast_pairs": "blocks.0.mlp.act", "cladec_layers": "blocks.1.norm1",
        "nave_object_extraction": "blocks.1.norm1", "dora_outliers": "blocks.1.cls", "cluscam_faithfulness": "blocks.1.norm1",
    }
    for table, layer in expected.items():
        frame = tables[table]
        column = "layers" if "layers" in frame.columns and "layer" not in frame.columns else "layer"
        assert set(frame.model) == {"vit_clean"}, table
        assert layer in set(frame[column].dropna()), (table, set(frame[column]))
    # NAVE found the digit as an object on the ViT's patch tokens, where a trained net separates ink from background
    nave = tables["nave_object_extraction"].set_index(["method", "strategy"]).ap50
    assert nave["nave", "outer"] > 0.5
    # DORA on the class token's 32 dimensions and on the 10 logits, each ranked in full by every detector
    outliers = tables["dora_outliers"]
    sizes = outliers[outliers.distance == "ea_n"].groupby("layer").n_representations.max().to_dict()
    assert sizes == {"blocks.1.cls": 32, "logits": 10}
    # the CAMs on the 7x7 patch map: finite faithfulness for every method
    cam = tables["cluscam_faithfulness"]
    assert set(cam.method) == {"cluscam", "gradcam", "scorecam", "ablationcam", "rise", "occlusion"}
    assert np.isfinite(cam[["deletion_auc", "insertion_auc"]].to_numpy()).all()
    assert tables["cladec_layers"][["rec_cladec", "rec_refae"]].gt(0).all().all()


def test_no_register_twin_no_register_rows(vit_run):
    results, _ = vit_run
    # one ViT, no twin differing only in its registers: the comparison table is written, empty
    registers = pd.read_csv(results / "tables" / "nave_registers.csv")
    assert "registers" in registers.columns and registers.empty
