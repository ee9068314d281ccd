"""Training and evaluation on real digits: learning happens, seeds reproduce, metrics are right."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from conceptscope.evaluation import predict, summarize_predictions
from conceptscope.models import build_model, build_transform, resolve_preprocess
from conceptscope.training import train_classifier


def _train(data, epochs, seed=0, n=None):
    transform = build_transform(resolve_preprocess("vgg_small", {}))
    train = data.torch_dataset("train", transform)
    if n:
        train.rows, train._tuples = train.rows.iloc[:n], train._tuples[:n]
    model = build_model("vgg_small", 10, 1, seed=seed)
    log = train_classifier(model, train, epochs=epochs, batch_size=32, lr=2e-3, seed=seed, progress=False)
    return model, log, transform


def test_training_learns_real_digits(shortcut_digits):
    model, log, transform = _train(shortcut_digits, epochs=5)
    assert log["loss"].iloc[-1] < 0.5 * log["loss"].iloc[0]
    preds = predict(model, shortcut_digits.torch_dataset("test", transform), progress=False)
    preds["split"] = "test"
    top1 = summarize_predictions(preds, None)["top1"].iloc[0]
    assert top1 > 0.6, f"test accuracy {top1:.3f} after 5 epochs on 300 real digits"


def test_training_is_reproducible_for_a_seed(shortcut_digits):
    first, log1, _ = _train(shortcut_digits, epochs=1, seed=7, n=64)
    second, log2, _ = _train(shortcut_digits, epochs=1, seed=7, n=64)
    other, _, _ = _train(shortcut_digits, epochs=1, seed=8, n=64)
    for (name, a), b, c in zip(first.state_dict().items(), second.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert log1.equals(log2)
    assert not torch.equal(first.classifier.weight, other.classifier.weight)


def test_predict_outputs_topk_and_logits(shortcut_digits):
    model = build_model("vgg_small", 10, 1, seed=0).eval()
    transform = build_transform(resolve_preprocess("vgg_small", {}))
    frame = predict(model, shortcut_digits.torch_dataset("test", transform), batch_size=16, top_k=3, progress=False)
    assert len(frame) == 300
    logits = np.stack(frame["logits"])
    assert logits.shape == (300, 10)
    assert (frame["pred"].to_numpy() == logits.argmax(1)).all()
    assert (np.stack(frame["topk_class"])[:, 0] == frame["pred"]).all()
    probs = np.stack(frame["topk_prob"])
    assert probs.shape == (300, 3) and (np.diff(probs, axis=1) <= 1e-6).all()
    assert set(frame["image_id"]) == set(shortcut_digits.split("test").image_id)


def test_summary_counts_shortcut_rate_on_other_classes_only():
    predictions = pd.DataFrame(
        {
            "split": ["test"] * 4 + ["test_watermarked"] * 4,
            "label": [0, 1, 2, 2, 0, 1, 2, 2],
            "pred": [0, 1, 2, 0, 0, 0, 0, 2],
        }
    )
    summary = summarize_predictions(predictions, shortcut_class=0).set_index("split")
    assert summary.loc["test", "top1"] == 0.75
    assert summary.loc["test", "top1_non_shortcut"] == 2 / 3
    assert summary.loc["test_watermarked", "shortcut_rate"] == 2 / 3  # labels 1,2,2 -> preds 0,0,2
    assert summary.loc["test", "shortcut_rate"] == 2 / 3
    plain = summarize_predictions(predictions.assign(label=[-1, 1, 2, 2, 0, 1, 2, 2]), None).set_index("split")
    assert plain.loc["test", "top1"] == 2 / 3 and np.isnan(plain.loc["test", "shortcut_rate"])
