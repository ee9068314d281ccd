"""Saliency maps (ClusCAM and five baselines) and their faithfulness metrics.

`cams` holds the methods and their registry, `metrics` the faithfulness metrics, `base` the
defaults and checks they share; everything public is importable from here.

ClusCAM ("ClusCAM: Clustered Visual Explanations for Vision Models in Image Classification"): the K
feature maps of one layer are upsampled to the input, clustered with K-means++ into a few
meta-representations, each cluster centroid masks the input, and the centroids are weighted by a
temperature softmax of their logit differences after the least important ones are dropped. The
baselines: Grad-CAM, Score-CAM, Ablation-CAM, RISE and occlusion.

Every saliency method is called the same way and returns (B, H, W) in [0, 1] on the model's device:

    saliency = get_saliency_method("cluscam")(model, images, "features.18", target, n_clusters=10)
    saliency = SALIENCY_METHODS["scorecam"](model, images, "features.18", target=labels)
    scores = faithfulness(model, images, saliency, labels)      # {"deletion_auc": (B,), ...}

`inputs` are normalised images (B, C, H, W) as the model takes them; `target` is one class index or
one per image (B,). Masking happens in that normalised space (input * mask), so a masked-out pixel
is 0 after normalisation, i.e. the dataset's mean colour: the convention of Score-CAM's, RISE's and
the ClusCAM authors' code, and of pytorch-grad-cam's metrics. RISE and occlusion perturb the input,
not a layer: they take `layer` like the others (so callers switch methods by name), check that it
names a module when given, and do not use it (`LAYER_FREE_METHODS`).

Vision transformers need nothing of their own here: on a model with a token layout (tokens.py),
`get_layer` gives a token layer's patch tokens as a map (B, D, h, w) that hooks read, replace and
differentiate like a conv layer's output (class and register tokens left out of the map). Choose a
layer whose patch tokens still reach the class token. In a pre-norm ViT the last block's output
does not: only its class token goes on (through the final LayerNorm) to the head, so the patch
tokens' gradients and ablations are zero and Grad-CAM's and Ablation-CAM's maps are empty. The CAM
layer of a ViT is the last block's first LayerNorm, the input of its attention, as pytorch-grad-cam
recommends (`model.blocks[-1].norm1`): `blocks.3.norm1` in a 4-block vit_small,
`encoder.layers.encoder_layer_11.ln_1` in torchvision's vit_b_16.

Faithfulness (probabilities are the softmax of the logits for the target class):
- deletion / insertion AUC (RISE, Petsiuk et al. 2018, Sec. 4.1): remove (insert) pixels in order of
  decreasing saliency in `steps` equal steps; trapezoid area under the probability curve over the
  removed (inserted) fraction 0..1. Lower deletion and higher insertion are better.
- average drop and increase in confidence (Grad-CAM++, Chattopadhay et al. 2018, Sec. 6.1):
  O_c is the score of input * saliency, Y_c that of the input; per image max(0, Y_c - O_c) / Y_c x 100
  and 100 x [O_c > Y_c]; their means over images are the papers' figures.
ROAD (Rong et al. 2022) is not implemented: its noisy linear imputation solves a sparse system of
H x W unknowns per image and threshold, far from quick on a CPU; pytorch-grad-cam's
`pytorch_grad_cam.metrics.road` has it.
"""

from .base import (
    BATCH_SIZE,
    BLUR_KERNEL,
    BLUR_SIGMA,
    CLUSCAM_CLUSTERS,
    CLUSCAM_DROP_FRACTION,
    CLUSCAM_TEMPERATURE,
    FAITHFULNESS_STEPS,
    OCCLUSION_WINDOW_FRACTION,
    RISE_GRID,
    RISE_KEEP_PROBABILITY,
    RISE_MASKS,
    SaliencyError,
    SaliencyMethod,
    Target,
)
from .cams import (
    LAYER_FREE_METHODS,
    SALIENCY_METHODS,
    ablationcam,
    cluscam,
    cluster_feature_maps,
    get_saliency_method,
    gradcam,
    occlusion,
    rise,
    scorecam,
)
from .metrics import (
    average_drop,
    deletion_auc,
    explain_and_score,
    faithfulness,
    gaussian_blur,
    increase_in_confidence,
    insertion_auc,
    saliency_mass_in_box,
)

__all__ = [
    "BATCH_SIZE", "BLUR_KERNEL", "BLUR_SIGMA", "CLUSCAM_CLUSTERS", "CLUSCAM_DROP_FRACTION", "CLUSCAM_TEMPERATURE",
    "FAITHFULNESS_STEPS", "LAYER_FREE_METHODS", "OCCLUSION_WINDOW_FRACTION", "RISE_GRID", "RISE_KEEP_PROBABILITY",
    "RISE_MASKS", "SALIENCY_METHODS", "SaliencyError", "SaliencyMethod", "Target", "ablationcam", "average_drop",
    "cluscam", "cluster_feature_maps", "deletion_auc", "explain_and_score", "faithfulness", "gaussian_blur",
    "get_saliency_method", "gradcam", "increase_in_confidence", "insertion_auc", "occlusion", "rise",
    "saliency_mass_in_box", "scorecam",
]
