"""Rule dora_sams: synthetic AMS of the representations and EA_s on them -> sams.npz and a figure.

Feature visualisation (DORA Def. 6, Sec. 3.2): n signals per representation, each optimised for m
steps in a Fourier parametrisation with random jitter, scale and rotation, batched over
representations. Every signal then passes the model once; mu[i, j] is the mean raw activation of
representation j on representation i's signals (Def. 7: raw, not standardised, activations), and
EA_s (pair- and layer-wise) follows. With `max_representations` only a seeded subset of R
representations gets signals (the CPU budget): EA_s is given between those R (`positions` says
which), the layer-wise distance still over their RAVs across all k representations of the layer, as
Def. 7 defines it; `activations` keeps all k columns.
"""

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import job_model_and_data_info, setup  # noqa: E402
from conceptscope.methods.dora import synthetic_distances  # noqa: E402
from conceptscope.methods.feature_vis import representation_outputs, synthetic_ams  # noqa: E402
from conceptscope.utils import atomic_path  # noqa: E402

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p, w = sm.params, sm.wildcards
opts = p.sams
model, info, device = job_model_and_data_info(sm)
reps = np.load(sm.input.representations)
names, index = reps["names"].astype(str), reps["representation"]
k = len(index)
positions = np.arange(k)
if opts["max_representations"] is not None and k > opts["max_representations"]:
    positions = np.sort(np.random.default_rng(p.seed).choice(k, opts["max_representations"], replace=False))
layer = None if w.rep_layer == "logits" else w.rep_layer
pre = info["preprocess"]
side = opts["image_size"] or pre["input_size"]
mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1)
std = torch.tensor(pre["std"]).view(1, -1, 1, 1)
start = time.perf_counter()
signals = synthetic_ams(model, layer, index[positions].tolist(), n_signals=opts["n_signals"], steps=opts["steps"],
                        image_shape=(pre["channels"], side, side), mean=pre["mean"], std=pre["std"], lr=opts["lr"],
                        batch_size=opts["batch_size"], seed=p.seed, device=device)
seconds = time.perf_counter() - start
log.info("%d representations x %d s-AMS, %d steps: %.1f s (%.2f s per representation)", len(positions), opts["n_signals"], opts["steps"], seconds, seconds / len(positions))

# activations of every representation of the layer on every signal: (R, n, k)
flat = signals.flatten(0, 1)
with torch.no_grad():
    outputs = torch.cat([representation_outputs(model, layer, ((batch - mean) / std).to(device)).cpu()
                         for batch in flat.split(opts["batch_size"])])
acts = outputs[:, torch.as_tensor(index)].reshape(len(positions), opts["n_signals"], k).numpy()
own = acts[np.arange(len(positions)), :, positions]
log.info("each s-AMS' own representation: mean activation %.3f; all %d representations on them: %.3f", own.mean(), k, acts.mean())
distances = synthetic_distances(acts, positions)
with atomic_path(sm.output.sams) as tmp:
    with open(tmp, "wb") as handle:
        np.savez(handle, positions=positions, activations=acts.astype(np.float32), seconds=seconds,
                 signals=(signals[: opts["figures"]].numpy() * 255).round().astype(np.uint8),
                 **{name: d.astype(np.float32) for name, d in distances.items()})

shown = min(opts["figures"], len(positions)) or 1
cols = opts["n_signals"]
fig, axes = plt.subplots(shown, cols, figsize=(1.6 * cols, 1.6 * shown), squeeze=False)
for r in range(shown):
    for c in range(cols):
        ax = axes[r, c]
        ax.axis("off")
        if r < len(positions):
            image = signals[r, c].permute(1, 2, 0).numpy()
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
            if c == 0:
                ax.set_title(names[positions[r]][:24], fontsize=6)
fig.suptitle(f"s-AMS of {w.model} {w.rep_layer} ({opts['steps']} steps)", fontsize=8)
with atomic_path(sm.output.figure) as tmp:
    fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
plt.close(fig)
