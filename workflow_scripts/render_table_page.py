"""Rule render_table_page: one table under tables/ as a captioned, sortable HTML page of the report."""

import pandas as pd

from _common import setup
from conceptscope.report import table_page
from conceptscope.utils import atomic_path

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup(sm)
frame = pd.read_csv(sm.input[0])
log.info("%s: %d rows x %d columns", sm.input[0], *frame.shape)
with atomic_path(sm.output[0]) as tmp:
    tmp.write_text(table_page(frame, sm.params.title, sm.params.caption, query=sm.params.query))
