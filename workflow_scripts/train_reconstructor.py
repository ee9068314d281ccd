"""Rule train_reconstructor: one ClaDec decoder or RefAE of a model's layer -> reconstructor.pt + history.csv
(the training loss per epoch: per-pixel squared error on the [0, 1] scale, plus alpha x CE).

ClaDec (Eq. 1): a decoder trained on the frozen classifier's activations at the layer to reconstruct
the input, loss (1 - alpha) x per-pixel squared error on the [0, 1] scale + alpha x CE; `untrained` decodes the architecture at its seeded
initialisation instead (Table 6), `channels` only the first k channels (Sec. 6.4). RefAE: the same
encoder architecture, re-initialised and trained jointly with the decoder for reconstruction only.
"""

import time

import pandas as pd

from _common import image_loader, job_model_and_data, sampled_rows, setup, untrained_twin
from conceptscope.methods.cladec import ClaDec, RefAE, copy_reconstructor

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)


def write_history(losses):
    pd.DataFrame({"epoch": range(1, len(losses) + 1), "loss": losses}).to_csv(sm.output.history, index=False)


def train():
    """Train the job's reconstructor and write it with its loss history."""
    spec, opts, seed = sm.params.variant, sm.params.training, sm.params.seed
    model, info, data, device = job_model_and_data(sm)
    layer = sm.wildcards.layer
    rows = sampled_rows(data, "train", opts["max_images"], seed)
    if not len(rows):
        raise ValueError(f"dataset {sm.wildcards.dataset!r} has no training images to train a decoder on")
    loader = image_loader(data, rows, info, opts["batch_size"], shuffle=True, seed=seed)
    # the loss's squared error on the [0, 1] pixel scale (Eq. 1): the inputs are normalised with the model's std
    common = {"epochs": opts["epochs"], "lr": opts["lr"], "seed": seed, "input_std": info["preprocess"]["std"], "device": device}
    log.info("%s of %s at %s: %d training images, %d epochs, on %s", sm.wildcards.variant, sm.wildcards.model, layer, len(rows), opts["epochs"], device)
    started = time.perf_counter()
    if spec["kind"] == "refae":  # the architecture built anew at the seed: nothing of the classifier's training
        reconstructor = RefAE(**common).fit(model, layer, loader, fresh_model=untrained_twin(info, seed, device))
    else:
        explained = untrained_twin(info, seed, device) if spec["untrained"] else model
        reconstructor = ClaDec(alpha=spec["alpha"], channels=spec["channels"], **common).fit(explained, layer, loader)
    elapsed = time.perf_counter() - started
    log.info("trained in %.1f s; loss per epoch %s", elapsed, ", ".join(f"{v:.4g}" for v in reconstructor.loss_history_))
    reconstructor.save(sm.output.reconstructor, dataset=sm.wildcards.dataset, model=sm.wildcards.model, variant=sm.wildcards.variant,
                       n_train=len(rows), seconds=elapsed, device=str(device), untrained=spec["untrained"])
    write_history(reconstructor.loss_history_)


if "shared" in sm.input.keys():  # a twin's RefAE (rules/common.smk: refae_owner): the same training, done once
    write_history(copy_reconstructor(sm.input.shared, sm.output.reconstructor, model=sm.wildcards.model))
    log.info("RefAE of %s: the one trained for %s (same architecture, seed and images)", sm.wildcards.model, sm.input.shared)
else:
    train()
