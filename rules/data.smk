# Datasets: images, labels, splits, object boxes and planted-shortcut watermark boxes.


rule prepare_dataset:
    output:
        directory(result("data", "{dataset}")),
    log:
        result("logs", "prepare_dataset", "{dataset}.log"),
    conda:
        "../envs/conceptscope.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        spec=lambda w: dataset_params(w.dataset),
    script:
        "../workflow_scripts/prepare_dataset.py"
