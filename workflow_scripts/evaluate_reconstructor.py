"""Rule evaluate_reconstructor: one reconstructor's numbers on the test images -> evaluation.json.

- rec: mean squared error per pixel on the [0, 1] scale (the Rec columns of Tables 2-6; the unit of
  the decoders' training loss), per class too;
- the explained classifier on the reconstructions: its cross-entropy (Tables 4-5's classifier loss)
  and accuracy; for the untrained variant, the untrained classifier;
- acc_eval: C_eval, a fresh model of the architecture trained on reconstructions of the training
  images, tested on reconstructions of the test images (Sec. 5; not for channel subsets), with the
  model's own recipe (Adam) or the paper's (SGD, `PAPER_EVAL_TRAIN`), as `eval_train` records;
- where the dataset has watermarked test images (a planted shortcut): the per-pixel error inside the
  recorded watermark box against the watermarked input, against the same image without the
  watermark, and outside the box.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F

from _common import image_loader, job_model_and_data, sampled_rows, setup, untrained_twin
from conceptscope.methods.cladec import PAPER_EVAL_TRAIN, evaluation_accuracy, load_reconstructor, reconstruction_error
from conceptscope.methods.cladec_analysis import box_errors, pixel_maps
from conceptscope.models import model_from_info
from conceptscope.utils import write_json

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p = sm.params
spec = p.variant
model, info, data, device = job_model_and_data(sm)
reconstructor = load_reconstructor(sm.input.reconstructor, model, device)
explained = untrained_twin(info, p.seed, device) if spec["untrained"] else model.eval()
std = info["preprocess"]["std"]
train_rows = sampled_rows(data, "train", p.max_images, p.seed)
test_rows = sampled_rows(data, "test", p.max_test_images, p.seed)
train_loader = image_loader(data, train_rows, info, p.batch_size)
test_loader = image_loader(data, test_rows, info, p.batch_size)
started = time.perf_counter()

errors, labels, losses, correct, original_correct = [], [], [], [], []
with torch.no_grad():
    for images, y, _ in test_loader:
        images, y = images.to(device), y.to(device)
        x_hat = reconstructor.reconstruct(images)
        errors.append(reconstruction_error(images, x_hat, std).cpu())
        logits = explained(x_hat)
        losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
        correct.append((logits.argmax(1) == y).cpu())
        original_correct.append((explained(images).argmax(1) == y).cpu())
        labels.append(y.cpu())
errors, labels = torch.cat(errors).numpy(), torch.cat(labels).numpy()
out = {
    "variant": sm.wildcards.variant, **spec, "n_train": len(train_rows), "n_test": len(test_rows),
    "epochs": reconstructor.epochs, "final_train_loss": reconstructor.loss_history_[-1],
    "rec": float(errors.mean()), "rec_std": float(errors.std()),
    "rec_per_class": {int(c): float(errors[labels == c].mean()) for c in np.unique(labels)},
    "classifier_loss": float(torch.cat(losses).mean()), "classifier_acc_on_reconstructions": float(torch.cat(correct).double().mean()),
    "classifier_acc": float(torch.cat(original_correct).double().mean()),
}
log.info("%s: rec %.4f per pixel, classifier on reconstructions: CE %.3f, accuracy %.3f", sm.wildcards.variant, out["rec"],
         out["classifier_loss"], out["classifier_acc_on_reconstructions"])

if p.eval_train is not None:
    settings = dict(p.eval_train)
    recipe = settings.pop("recipe", "model")
    settings = {**PAPER_EVAL_TRAIN, **settings} if recipe == "paper" else {"optimizer": "adam", **settings}
    fresh = model_from_info(info, seed=settings["seed"]).to(device)
    options = {k: settings[k] for k in ("batch_size", "lr", "weight_decay", "schedule", "momentum") if k in settings}
    out["acc_eval"] = evaluation_accuracy(reconstructor, fresh, train_loader, test_loader, epochs=settings["epochs"], seed=settings["seed"],
                                          optimizer=settings["optimizer"], **options)
    out["eval_train"] = {"recipe": recipe, **settings}
    log.info("C_eval trained on %d reconstructions (%s recipe: %s, %d epochs): test accuracy %.4f", len(train_rows), recipe,
             settings["optimizer"], settings["epochs"], out["acc_eval"])

marked = sampled_rows(data, "test_watermarked", p.max_test_images, p.seed)
if len(marked) and (marked["wm_x0"] >= 0).any():
    marked = marked[marked["wm_x0"] >= 0]
    # the same images without the watermark: the clean test rows with the same source (and array position)
    clean = marked[["source", "array_index"]].merge(data.split("test"), on=["source", "array_index"], how="left", validate="many_to_one")
    if clean["image_id"].isna().any():
        raise ValueError(f"dataset {sm.wildcards.dataset!r}: some watermarked test images have no clean twin in the test split")
    box, inside, against_clean, outside, shortcut_class = [], [], [], [], []
    marked_loader = image_loader(data, marked, info, p.batch_size)
    clean_loader = image_loader(data, clean, info, p.batch_size)
    boxes = marked[["wm_x0", "wm_y0", "wm_x1", "wm_y1"]].to_numpy()
    start = 0
    with torch.no_grad():
        for (images, y, _), (originals, *_) in zip(marked_loader, clean_loader):
            x_hat = reconstructor.reconstruct(images.to(device)).cpu()
            b = boxes[start : start + len(images)]
            start += len(images)
            inside.append(box_errors(x_hat, images, b, std))
            against_clean.append(box_errors(x_hat, originals, b, std))
            maps = pixel_maps(x_hat, images, std)
            mask = torch.ones_like(maps, dtype=torch.bool)
            for i, (x0, y0, x1, y1) in enumerate(b):
                mask[i, y0:y1, x0:x1] = False
            outside.append(((maps * mask).flatten(1).sum(1) / mask.flatten(1).sum(1)).numpy())
    inside, against_clean, outside = (np.concatenate(v) for v in (inside, against_clean, outside))
    in_class = (marked["label"] == data.shortcut_class).to_numpy() if data.shortcut_class is not None else np.zeros(len(marked), bool)
    out["watermark"] = {
        "n_images": len(marked), "box_error": float(inside.mean()), "box_error_vs_clean": float(against_clean.mean()),
        "outside_error": float(outside.mean()),
        "box_error_shortcut_class": float(inside[in_class].mean()) if in_class.any() else None,
        "box_error_other_classes": float(inside[~in_class].mean()) if (~in_class).any() else None,
    }
    log.info("watermark box: error %.4f against the watermarked input, %.4f against the clean image, %.4f outside",
             inside.mean(), against_clean.mean(), outside.mean())
out["seconds"] = time.perf_counter() - started
write_json(sm.output[0], out)
