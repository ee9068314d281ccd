"""Rule import_model: pretrained (packaged), file or random weights -> models/<name>/ in our format."""

from pathlib import Path

from _common import setup
from conceptscope.models import load_state_dict, model_from_info, resolve_preprocess, save_model, weights_file
from conceptscope.utils import library_versions

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
spec = sm.params.spec
preprocess = resolve_preprocess(spec["arch"], spec["preprocess"])
model = model_from_info({**spec, "preprocess": preprocess}, seed=0)
source = weights_file(spec["arch"], spec["weights"])
if source is not None:
    load_state_dict(model, source)
log.info("imported %s weights for %s from %s", spec["weights"], spec["arch"], source or "random init (seed 0)")
save_model(
    model,
    Path(sm.output.weights).parent,
    {
        "name": sm.wildcards.model,
        "arch": spec["arch"],
        "arch_options": spec.get("arch_options") or {},
        "tokens": spec.get("tokens"),
        "num_classes": spec["num_classes"],
        "preprocess": preprocess,
        "weights": spec["weights"],
        "weights_source": str(source) if source else None,
        "train_dataset": spec["train_dataset"],
        "versions": library_versions(),
    },
)
