# Datasets: images, labels, splits, object boxes and planted-shortcut watermark boxes.


rule prepare_dataset:
    output:
        directory(result("data", "{dataset}")),
    params:
        spec=lambda w: dataset_params(w.dataset),
    log:
        result("logs", "prepare_dataset", "{dataset}.log"),
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../workflow_scripts/prepare_dataset.py"
