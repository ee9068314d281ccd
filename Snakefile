# conceptscope: explain what vision models learn, with five concept methods over one activation store.
#
#   snakemake --cores all                         # the embedded default run (config.yaml)
#   snakemake --cores all --configfile configs/test.yaml
#   snakemake --profile profiles/slurm            # the same workflow on a SLURM cluster
#   snakemake --report report.html                # after a run: one self-contained HTML report
import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from conceptscope.config import COMBINED_ONLY, ConfigError, resolve_config  # noqa: E402
from conceptscope.utils import MALLOC_ENVIRONMENT  # noqa: E402

# jobs keep freed memory for reuse instead of faulting in fresh pages for every batch
# (conceptscope.utils.keep_freed_memory); settings already in the environment win
for name, value in MALLOC_ENVIRONMENT.items():
    os.environ.setdefault(name, value)

# config.yaml is the default; a --configfile given on the command line replaces it entirely
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


try:
    config = resolve_config(dict(config), base_dir=Path.cwd())
except ConfigError as error:
    raise WorkflowError(f"invalid configuration: {error}") from None
# the clear-message pass above has already filled every default; this is the schema's second opinion
validate(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/activations.smk"
include: "rules/concepts.smk"
include: "rules/contrast.smk"
include: "rules/cladec.smk"
include: "rules/nave.smk"
include: "rules/dora.smk"
include: "rules/cluscam.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
