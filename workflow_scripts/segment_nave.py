"""Rule segment_nave: NAVE segments of every stored image -> nave/{ds}/{model}/{layers}/k{k}_{clustering}/.

Reads the layers' activation maps from the store (no forward pass), clusters each image's pixels
(Algorithm 1), and writes `segments.zarr` (labels (N, H, W) on the clustering grid, image_id) and
`boxes.csv`: per image, target (object box, watermark box) and strategy, the selected segment, its box
in the model's input frame and its IoU (Sec. 4.2).
"""

from tqdm.auto import tqdm

from _common import frame_targets, nave_inputs, setup, write_scores, write_segments
from conceptscope.methods.nave import ActivationClustering, clustering_grid, score_segments
from conceptscope.models import frame_size

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p = sm.params
data, preprocess, stores, rows = nave_inputs(sm, p.layers, p.max_images)
grid = clustering_grid([s.activations.shape for s in stores], p.resolution)
if grid[0] * grid[1] < p.k:
    raise ValueError(
        f"NAVE on {sm.wildcards.model} {list(p.layers)}: a {grid[0]}x{grid[1]} grid has fewer pixels than K={p.k}; "
        "pick layers with larger maps in nave.layer_sets or set nave.resolution"
    )
nave = ActivationClustering(n_clusters=p.k, method=p.clustering, resolution=p.resolution, n_init=p.n_init, seed=p.seed)
log.info("%s/%s %s: %d images, grid %dx%d, K=%d, %s", sm.wildcards.dataset, sm.wildcards.model, list(p.layers), len(rows), *grid, p.k, p.clustering)
scores, batch = [], 32


def segment():
    for start in tqdm(range(0, len(rows), batch), desc="NAVE"):
        part = rows.iloc[start : start + batch]
        labels = nave.segment_images([s.numpy("activations", slice(start, start + len(part))) for s in stores])
        for row, image_labels in zip(part.itertuples(index=False), labels):
            frame = frame_size(row.width, row.height, preprocess)
            for hit in score_segments(image_labels, frame, p.strategies, frame_targets(row, preprocess)):
                scores.append({"image_id": row.image_id, "label": row.label, **hit})
        yield part["image_id"].to_numpy(), labels


write_segments(sm.output.segments, segment(), len(rows), {"dataset": sm.wildcards.dataset, "model": sm.wildcards.model,
               "layers": list(p.layers), "k": p.k, "clustering": p.clustering, "grid": list(grid), "seed": p.seed})
write_scores(sm.output.boxes, scores, sm.config["nave"]["iou_threshold"], log)
