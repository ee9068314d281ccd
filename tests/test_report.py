"""The cross-method shortcut verdict: the criterion on hand-made values and on method tables."""

import math

import pandas as pd

from conceptscope.report import noise_floor, shortcut_summary, verdict


def test_verdict_needs_twice_the_clean_excess_and_the_noise_floor():
    # the default run's prediction rates: 35% of watermarked digits of other classes vs 0.4%
    assert verdict(0.35, 0.004, 0.0, 900) == "detected"
    assert verdict(0.004, 0.35, 0.0, 900) == "not detected"  # the twins swapped
    # a ratio to the box's share: chance is 1 (saliency spread evenly)
    assert verdict(2.2, 1.02, 1.0, math.nan) == "detected"
    assert verdict(1.9, 1.5, 1.0, math.nan) == "not detected"  # excess 0.9 < 2 x 0.5
    # an AUC: chance 0.5, so 0.95 vs 0.84 is an excess of 0.45 vs 0.34
    assert verdict(0.95, 0.84, 0.5, math.nan) == "not detected"
    assert verdict(0.95, 0.6, 0.5, math.nan) == "detected"
    # a clean twin at 0 still has a noise floor: 1 crop of 32 is within sampling noise
    assert noise_floor(0.0, 0.0, 32) > 1 / 32
    assert verdict(1 / 32, 0.0, 0.0, 32) == "not detected"
    assert verdict(8 / 32, 0.0, 0.0, 32) == "detected"
    assert verdict(math.nan, 0.1, 0.0, 10) == "no clean twin value"


def test_summary_pairs_each_measure_and_flips_with_the_twins():
    models = pd.DataFrame({"model": ["a_shortcut", "a_clean"], "dataset": ["ds", "ds"], "split": ["test_watermarked"] * 2,
                           "shortcut_rate": [0.4, 0.01], "n_images": [900, 900]})
    saliency = pd.DataFrame({"model": ["a_shortcut", "a_clean"], "dataset": ["ds", "ds"], "layer": ["l3", "l3"],
                             "method": ["gradcam", "gradcam"], "ratio": [2.5, 1.1]})
    tables = {"models": models, "cluscam_watermark": saliency}
    summary = shortcut_summary(tables, [("a_shortcut", "a_clean", "ds")])
    assert sorted(summary["method"]) == ["gradcam", "prediction"]
    assert (summary["verdict"] == "detected").all()
    assert summary.loc[summary.method == "gradcam", "chance"].item() == 1.0
    swapped = shortcut_summary(tables, [("a_clean", "a_shortcut", "ds")])
    assert (swapped["verdict"] == "not detected").all()


def test_front_page_leads_with_the_verdict_by_method_and_one_figure_per_method(tmp_path):
    from PIL import Image

    from conceptscope.report import front_figure_file, front_page, verdict_by_method

    models = pd.DataFrame({"model": ["a_shortcut", "a_clean"], "dataset": ["ds", "ds"], "split": ["test_watermarked"] * 2,
                           "shortcut_rate": [0.4, 0.01], "n_images": [900, 900]})
    saliency = pd.DataFrame({"model": ["a_shortcut", "a_clean"] * 2, "dataset": ["ds"] * 4, "layer": ["l3"] * 4,
                             "method": ["gradcam", "gradcam", "rise", "rise"], "ratio": [2.5, 1.1, 1.2, 1.3]})
    summary = shortcut_summary({"models": models, "cluscam_watermark": saliency}, [("a_shortcut", "a_clean", "ds")])
    table = verdict_by_method(summary).set_index("method")["a_shortcut"]
    assert table.to_dict() == {"prediction (ground truth)": "detected", "Grad-CAM": "detected", "RISE": "not detected (1 measure)"}
    assert list(table.index) == ["prediction (ground truth)", "Grad-CAM", "RISE"]  # the ground truth first
    # a measure without a clean twin value is neither detected nor missed: it is named apart
    unpaired = summary.assign(verdict=summary["verdict"].where(summary["method"] != "rise", "no clean twin value"))
    assert verdict_by_method(unpaired).set_index("method").loc["RISE", "a_shortcut"] == "no clean twin value (1 measure)"
    unpaired = pd.concat([summary, unpaired[unpaired["method"] == "rise"]])
    assert verdict_by_method(unpaired).set_index("method").loc["RISE", "a_shortcut"] == \
        "not detected (1 measure); no clean twin value (1 measure)"
    # a concepts crop folder: the figure of the shortcut class is chosen over the others
    crops = tmp_path / "crops" / "figures"
    crops.mkdir(parents=True)
    for name in ("class_0000.png", "class_0003.png"):
        Image.new("RGB", (1600, 400), "white").save(crops / name)
    assert front_figure_file(tmp_path / "crops", 3).name == "class_0003.png"
    assert front_figure_file(tmp_path / "crops", None).name == "class_0000.png"
    config = {"results": "results", "seed": 0, "device": "cpu", "datasets": {"ds": {"kind": "digits", "shortcut": {"class": 3}}},
              "models": {"a_shortcut": {"arch": "resnet_small", "train_dataset": "ds"}}}
    figures = [{"method": "class concepts", "model": "a_shortcut", "dataset": "ds", "layer": "l3", "path": str(tmp_path / "crops")}]
    page = front_page(config, models, summary, ["models"], figures)
    # the verdict comes before the models and accuracies; the figure is embedded, shrunk to fit
    assert page.index("The planted shortcut, method by method") < page.index("One figure per method") < page.index("Models\n------")
    assert "class_0003" in page and page.count("data:image/png;base64,") == 1
    assert max(len(line) for line in page.splitlines()) < 10_000  # docutils' line length limit
    assert "#rulegraph" in page  # the layout fix for Snakemake's viewer travels with the page
