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
