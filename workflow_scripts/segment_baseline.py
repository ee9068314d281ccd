"""Rule segment_baseline: SLIC or Felzenszwalb segments of the stored images -> nave/{ds}/{model}/baselines/{baseline}/.

The model-agnostic baselines of the NAVE paper (Table 1), run on each image as the model sees it
(its preprocessing's resize and centre crop, before normalising), scored with the same selection
strategies as NAVE. Writes `segments.zarr` and `boxes.csv` like segment_nave.
"""

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from _common import frame_targets, nave_inputs, setup, write_scores, write_segments
from conceptscope.methods.nave import BASELINES, score_segments
from conceptscope.models import build_frame_transform

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
p = sm.params
data, preprocess, _, rows = nave_inputs(sm, [p.layer], p.max_images)
to_frame = build_frame_transform(preprocess)
method = BASELINES[p.method]
log.info("%s on %d images of %s as %s sees them: %s", p.method, len(rows), sm.wildcards.dataset, sm.wildcards.model, p.options)
scores = []


def segment():
    for row in tqdm(list(rows.itertuples(index=False)), desc=p.method):
        image = np.asarray(to_frame(Image.fromarray(data.load_image(row))))
        labels = method(image, **p.options)
        for hit in score_segments(labels, labels.shape, p.strategies, frame_targets(row, preprocess)):
            scores.append({"image_id": row.image_id, "label": row.label, **hit})
        yield [row.image_id], labels[None]


write_segments(sm.output.segments, segment(), len(rows), {"dataset": sm.wildcards.dataset, "frame_of": sm.wildcards.model,
               "method": p.method, "options": p.options})
write_scores(sm.output.boxes, scores, sm.config["nave"]["iou_threshold"], log)
