"""The default run's shortcut figures quoted in README and docs are the recorded run's.

`benchmarks/pipeline.py` copies the default run's `tables/shortcut_summary.csv` to
`benchmarks/results/pipeline_shortcut_summary.csv`. Every number in the shortcut-model and
clean-twin columns of the verdict tables quoted in README.md, docs/shortcut.md and
docs/transformers.md must be a value of that CSV's `shortcut_model` / `clean_model` column, at the
precision it is quoted; so a rerun that changes the figures fails here until the pages follow it.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

from conftest import ROOT

SUMMARY = ROOT / "benchmarks" / "results" / "pipeline_shortcut_summary.csv"
# page -> (the quoted table's header line, its shortcut column, its clean-twin column)
TABLES = {
    "README.md": ("| method | shortcut model | clean twin | verdict |", "shortcut model", "clean twin"),
    "docs/shortcut.md": ("| method | measure | layer (VGG / ResNet / ViT) | shortcut | clean twin | chance | verdict |", "shortcut", "clean twin"),
    "docs/transformers.md": ("| method | layer | shortcut | clean twin | chance | verdict |", "shortcut", "clean twin"),
}
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def quoted_table(page: str, header: str) -> list[dict[str, str]]:
    """The markdown table under `header` on `page`: one dict per body row, keyed by the header's cells."""
    lines = (ROOT / page).read_text().splitlines()
    assert header in lines, f"{page}: the default run's table (header {header!r}) is missing"
    start = lines.index(header)
    names = [cell.strip() for cell in header.strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (cell.strip() for cell in line.strip("|").split("|")))))
    return rows


def quoted_numbers(cell: str) -> list[str]:
    """The numbers of a cell such as '0.351 / 0.636 / 0.999', '1.52-7.77' or '- / 0.094'."""
    return NUMBER.findall(cell)


def recorded(values: pd.Series, quoted: str) -> bool:
    """Does `quoted` round one of `values` to its precision (a recorded 0.4765 reads 0.476 or 0.477)?"""
    half_step = 0.5 * 10.0 ** -len(quoted.partition(".")[2])
    return bool(((values.dropna() - float(quoted)).abs() <= half_step + 1e-9).any())


def test_quoted_numbers_are_parsed():
    assert quoted_numbers("0.351 / 0.636 / 0.999") == ["0.351", "0.636", "0.999"]
    assert quoted_numbers("1.52-7.77") == ["1.52", "7.77"]
    assert quoted_numbers("- / 0.094") == ["0.094"]
    values = pd.Series([0.3511, 0.0044, None])
    assert recorded(values, "0.351") and recorded(values, "0.35") and not recorded(values, "0.284")
    assert recorded(pd.Series([0.4765]), "0.476") and recorded(pd.Series([0.4765]), "0.477")


@pytest.mark.parametrize("page", sorted(TABLES))
def test_default_run_figures_match_the_recorded_run(page):
    summary = pd.read_csv(SUMMARY)
    header, shortcut, clean = TABLES[page]
    rows = quoted_table(page, header)
    assert rows, f"{page}: the default run's table has no rows"
    stale = [(row["method"], column, number) for row in rows
             for column, values in ((shortcut, summary["shortcut_model"]), (clean, summary["clean_model"]))
             for number in quoted_numbers(row[column]) if not recorded(values, number)]
    assert not stale, f"{page}: figures not in {SUMMARY.name}: {stale}"
