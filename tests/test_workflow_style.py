"""The workflow's own hygiene: Snakemake's linter has nothing to say and the rule files are snakefmt-formatted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_snakemake_lint_is_clean():
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--lint"], cwd=ROOT,
                         capture_output=True, text=True)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "Congratulations, your workflow is in a good condition!" in output, output[-4000:]


def test_rule_files_are_snakefmt_formatted():
    snakefmt = Path(sys.executable).with_name("snakefmt")
    run = subprocess.run([str(snakefmt), "--check", "Snakefile", "rules/"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
