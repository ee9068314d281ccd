"""Glue shared by the workflow scripts: logging into the rule's log file, threads, quiet progress."""

from __future__ import annotations

import logging
import sys


def setup(snakemake) -> logging.Logger:
    """Send log records and warnings to the rule's log file (and stderr); limit torch threads."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        handlers.append(logging.FileHandler(snakemake.log[0], mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)
    logging.captureWarnings(True)
    from conceptscope.utils import set_threads

    set_threads(snakemake.threads)
    return logging.getLogger(f"conceptscope.{snakemake.rule}")
