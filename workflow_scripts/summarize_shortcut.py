"""Rule summarize_shortcut: tables/shortcut_summary.csv (every method's planted-shortcut measure, each
shortcut model beside its clean twin) and report/front.rst, the report's front page."""

from _common import setup
from conceptscope.report import front_page, read_tables, shortcut_pairs, shortcut_summary
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
config = sm.params.config
tables = read_tables(sm.input.tables)
pairs = shortcut_pairs(config["models"], config["datasets"])
summary = shortcut_summary(tables, pairs)
log.info("shortcut pairs %s; %d measures\n%s", pairs, len(summary), summary.to_string())
with atomic_path(sm.output.summary) as tmp:
    summary.to_csv(tmp, index=False, float_format="%.4f")
page = front_page(config, tables["models"], summary, sm.params.tables, sm.params.figures)
with atomic_path(sm.output.front) as tmp:
    tmp.write_text(page)
