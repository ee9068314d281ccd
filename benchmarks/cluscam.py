"""Benchmark `cluscam`: seconds per image of ClusCAM, five baseline saliency methods and the faithfulness metrics.

    .venv/bin/python benchmarks/cluscam.py [--images 4] [--rise-masks 4000] [--steps 100]

The real ImageNet MobileNetV2, layer `features.18` (1,280 maps of 7 x 7), on 224 x 224 Imagenette
validation images (the first `--images` class folders, the first file of each), explaining the
predicted class. Each image is explained on its own (batch of one) and the time is averaged:

- `seconds_per_image_<method>` for every method of `SALIENCY_METHODS` at its defaults (ClusCAM:
  10 clusters, drop 0.5, temperature 0.5; occlusion: 32 px patches, stride 16), except RISE, which
  uses `--rise-masks` masks (default 4,000, the method's default; recorded as `rise_masks`);
- `seconds_per_image_deletion_auc`, `..._insertion_auc` (`--steps` steps, `steps + 1` forward passes
  each), `..._average_drop` (two forward passes; increase in confidence costs the same) and
  `..._faithfulness` (all four metrics together), on the ClusCAM maps.

ClusCAM's centroid masks as they are (the authors' code, the default) against min-max rescaled
(`rescale_centroids=True`), on two real cases, each map for the predicted class and scored with
`faithfulness` (deletion AUC from zero, insertion AUC from the blur, `--steps` steps; average drop,
increase in confidence), ClusCAM at its defaults otherwise:

- `mobilenet_photos`: the ImageNet MobileNetV2 at features.18 on foolbox's 20 labelled ImageNet
  photos (224 x 224);
- `resnet_digits`: resnet_small trained on real MNIST digits (30 per class, 10 epochs, seed 0; the
  tests' recipe) at layer3 (128 maps of 7 x 7), on every third of the 300 test digits (100, 28 x 28).

Per case and setting `rescale_<case>_<setting>_<metric>` is the mean over images; `..._diff_<metric>`
the mean paired difference rescaled minus raw with `..._diff_se_<metric>` its standard error, and
`..._rescale_better_<metric>` the share of images where the rescale scores better.
`--compare-only` runs this comparison alone and keeps the file's other entries.

Writes benchmarks/results/cluscam.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VAL_DIR = ROOT.parent / "shared" / "data" / "imagenette" / "val"
LAYER = "features.18"


def load_images(n_images: int) -> torch.Tensor:
    """The first file of each of the first `n_images` class folders, as normalised 224 x 224 tensors (N, 3, 224, 224)."""
    from PIL import Image

    from conceptscope.models import build_transform, resolve_preprocess

    folders = sorted(p for p in VAL_DIR.iterdir() if p.is_dir())
    if n_images > len(folders):
        raise SystemExit(f"--images {n_images}: {VAL_DIR} has only {len(folders)} class folders")
    transform = build_transform(resolve_preprocess("mobilenet_v2", {}))
    return torch.stack([transform(Image.open(sorted(folder.iterdir())[0])) for folder in folders[:n_images]])


def foolbox_photos() -> torch.Tensor:
    """foolbox's 20 labelled ImageNet photos as normalised 224 x 224 tensors (20, 3, 224, 224)."""
    import importlib.util

    from PIL import Image

    from conceptscope.models import build_transform, resolve_preprocess

    folder = Path(list(importlib.util.find_spec("foolbox").submodule_search_locations)[0]) / "data"
    transform = build_transform(resolve_preprocess("mobilenet_v2", {}))
    return torch.stack([transform(Image.open(path).convert("RGB")) for path in sorted(folder.glob("imagenet_*.jpg"))])


def digits_case(workdir: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    """resnet_small trained on real digits (30 per class, 10 epochs, seed 0) and every third test digit (100, 1, 28, 28)."""
    from conceptscope.config import resolve_config
    from conceptscope.data import PreparedDataset, prepare_dataset
    from conceptscope.models import build_model, build_transform, resolve_preprocess
    from conceptscope.training import train_classifier

    spec = resolve_config({"datasets": {"d": {"kind": "digits", "max_per_class": 30}}})["datasets"]["d"]
    prepare_dataset(spec, workdir / "digits", "digits")
    data = PreparedDataset(workdir / "digits")
    transform = build_transform(resolve_preprocess("resnet_small", {}))
    model = build_model("resnet_small", 10, 1, seed=0)
    train_classifier(model, data.torch_dataset("train", transform), epochs=10, seed=0, progress=False)
    test = data.torch_dataset("test", transform)
    return model.eval(), torch.stack([test[i][0] for i in range(0, len(test), 3)])  # every third: 100 of the 300


def compare_rescale(cases: dict, steps: int) -> dict:
    """ClusCAM's raw (default) against rescaled centroids per case: mean metrics and paired differences."""
    from conceptscope.methods.saliency import cluscam, faithfulness

    higher_is_better = {"deletion_auc": False, "insertion_auc": True, "average_drop": False, "increase_in_confidence": True}
    figures: dict = {}
    for case, (model, images, layer) in cases.items():
        with torch.no_grad():
            targets = model(images).argmax(1)
        scores = {}
        for setting, rescale in (("raw", False), ("rescaled", True)):
            maps = cluscam(model, images, layer, targets, rescale_centroids=rescale, progress=False)
            scores[setting] = faithfulness(model, images, maps, targets, steps=steps, progress=False)
        figures[f"rescale_{case}_images"] = len(images)
        for metric, higher in higher_is_better.items():
            raw, rescaled = scores["raw"][metric], scores["rescaled"][metric]
            diff = rescaled - raw
            figures[f"rescale_{case}_raw_{metric}"] = round(float(raw.mean()), 4)
            figures[f"rescale_{case}_rescaled_{metric}"] = round(float(rescaled.mean()), 4)
            figures[f"rescale_{case}_diff_{metric}"] = round(float(diff.mean()), 4)
            figures[f"rescale_{case}_diff_se_{metric}"] = round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4)
            figures[f"rescale_{case}_rescale_better_{metric}"] = round(float(np.mean(diff > 0 if higher else diff < 0)), 3)
            print(f"{case} {metric}: raw {raw.mean():.4f} rescaled {rescaled.mean():.4f} diff {diff.mean():+.4f}", flush=True)
    return figures


def seconds_per_image(fn, images: torch.Tensor, targets: torch.Tensor) -> tuple[float, list]:
    """Mean seconds of fn(image (1, C, H, W), target (1,)) over the images, and the results."""
    seconds, results = [], []
    for image, target in zip(images, targets):
        start = time.perf_counter()
        results.append(fn(image[None], target[None]))
        seconds.append(time.perf_counter() - start)
    return float(np.mean(seconds)), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="validation images timed one by one")
    parser.add_argument("--rise-masks", type=int, default=None, help="RISE masks (default: the method's default, 4000)")
    parser.add_argument("--steps", type=int, default=None, help="deletion/insertion steps (default: the metrics' default, 100)")
    parser.add_argument("--compare-only", action="store_true", help="only the raw vs rescaled centroid comparison, keeping the file's other entries")
    args = parser.parse_args()

    from conceptscope.methods.saliency import (
        FAITHFULNESS_STEPS,
        RISE_MASKS,
        SALIENCY_METHODS,
        average_drop,
        deletion_auc,
        faithfulness,
        insertion_auc,
    )
    from conceptscope.models import pretrained_model
    from conceptscope.utils import configure_process

    configure_process(2)
    torch.manual_seed(0)
    # imported before the clock starts: one-off import time is not per-image cost
    import captum.attr  # noqa: F401
    import sklearn.cluster  # noqa: F401
    rise_masks = RISE_MASKS if args.rise_masks is None else args.rise_masks
    steps = FAITHFULNESS_STEPS if args.steps is None else args.steps
    model = pretrained_model("mobilenet_v2")

    def comparison() -> dict:
        with tempfile.TemporaryDirectory() as workdir:
            cases = {"mobilenet_photos": (model, foolbox_photos(), LAYER), "resnet_digits": (*digits_case(Path(workdir)), "layer3")}
        return {**compare_rescale(cases, steps), "rescale_faithfulness_steps": steps}

    if args.compare_only:
        path = RESULTS_DIR / "cluscam.json"
        kept = {k: v for k, v in json.loads(path.read_text()).items() if k != "machine"} if path.exists() else {}
        write_results("cluscam", {**kept, **comparison()})
        return
    images = load_images(args.images)
    with torch.no_grad():
        targets = model(images).argmax(1)

    figures: dict = {"images_timed": len(images), "layer": LAYER, "input_size": 224, "rise_masks": rise_masks, "faithfulness_steps": steps}
    maps = {}
    for name, method in SALIENCY_METHODS.items():
        options = {"n_masks": rise_masks} if name == "rise" else {}
        seconds, results = seconds_per_image(lambda x, t: method(model, x, LAYER, t, **options), images, targets)
        figures[f"seconds_per_image_{name}"] = round(seconds, 3)
        maps[name] = torch.cat(results)
        print(f"{name}: {seconds:.2f} s per image", flush=True)

    saliency = maps["cluscam"]
    metrics = {
        "deletion_auc": lambda x, t, s: deletion_auc(model, x, s, t, steps=steps),
        "insertion_auc": lambda x, t, s: insertion_auc(model, x, s, t, steps=steps),
        "average_drop": lambda x, t, s: average_drop(model, x, s, t),
        "faithfulness": lambda x, t, s: faithfulness(model, x, s, t, steps=steps),
    }
    for name, metric in metrics.items():
        seconds = []
        for image, target, sal in zip(images, targets, saliency):
            start = time.perf_counter()
            metric(image[None], target[None], sal[None])
            seconds.append(time.perf_counter() - start)
        figures[f"seconds_per_image_{name}"] = round(float(np.mean(seconds)), 3)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    figures.update(comparison())  # after the timing and the peak memory
    write_results("cluscam", figures)


if __name__ == "__main__":
    main()
