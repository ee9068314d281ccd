"""Rule train_model: train a small net on its dataset's train split; record accuracy per epoch."""

from pathlib import Path

from _common import setup
from conceptscope.data import PreparedDataset
from conceptscope.evaluation import predict, summarize_predictions
from conceptscope.models import build_transform, model_from_info, resolve_preprocess, save_model
from conceptscope.training import train_classifier
from conceptscope.utils import atomic_path, library_versions, resolve_device

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
spec = sm.params.spec
device = resolve_device(sm.params.device)
preprocess = resolve_preprocess(spec["arch"], spec["preprocess"])
transform = build_transform(preprocess)
data = PreparedDataset(sm.input.data)
hp = spec["train"]
model = model_from_info({**spec, "preprocess": preprocess}, seed=hp["seed"])
log.info("training %s on %s (%d images) on %s", spec["arch"], spec["train_dataset"], len(data.split("train")), device)
train_log = train_classifier(
    model,
    data.torch_dataset("train", transform),
    epochs=hp["epochs"],
    batch_size=hp["batch_size"],
    lr=hp["lr"],
    weight_decay=hp["weight_decay"],
    schedule=hp["schedule"],
    seed=hp["seed"],
    device=device,
)
test = data.torch_dataset("test", transform)
test_acc = None
if len(test):
    preds = predict(model, test, device=device, store_logits=False, progress=False)
    preds["split"] = "test"
    test_acc = float(summarize_predictions(preds, None)["top1"].iloc[0])
log.info("final train acc %.4f, test acc %s", train_log["train_acc"].iloc[-1], test_acc)
with atomic_path(sm.output.log_csv) as tmp:
    train_log.to_csv(tmp, index=False)
save_model(
    model.cpu(),
    Path(sm.output.weights).parent,
    {
        "name": sm.wildcards.model,
        "arch": spec["arch"],
        "arch_options": spec.get("arch_options") or {},
        "tokens": spec.get("tokens"),
        "num_classes": spec["num_classes"],
        "preprocess": preprocess,
        "weights": "train",
        "train_dataset": spec["train_dataset"],
        "train": hp,
        "train_acc": float(train_log["train_acc"].iloc[-1]),
        "test_acc": test_acc,
        "versions": library_versions(),
    },
)
