# The report: every table as a captioned page (categories by method), the cross-method planted-shortcut
# summary and the front page. `snakemake --report report.html` after a run collects them with every
# figure marked `report(...)` in the method rules (captions under report/captions/).
report: front_page_path()


FRONT_FIGURES = front_figures()


rule summarize_shortcut:
    input:
        tables=lambda w: [result("tables", f"{name}.csv") for name in run_tables() if name in SHORTCUT_TABLES],
        figures=[figure["path"] for figure in FRONT_FIGURES],
    output:
        summary=result("tables", "shortcut_summary.csv"),
        front=result("report", "front.rst"),
    log:
        result("logs", "summarize_shortcut.log"),
    localrule: True
    conda:
        "../envs/conceptscope.yaml"
    params:
        config={key: config[key] for key in ("results", "seed", "device", "datasets", "models")},
        tables=lambda w: run_tables() + ["shortcut_summary"],
        figures=FRONT_FIGURES,
    script:
        "../workflow_scripts/summarize_shortcut.py"


rule render_table_page:
    input:
        result("tables", "{table}.csv"),
    output:
        report(
            result("report", "tables", "{table}.html"),
            caption="../report/captions/table.rst",
            category=lambda w: TABLE_PAGES[w.table]["category"],
            subcategory="Tables",
            labels=lambda w: {"table": w.table, "shows": TABLE_PAGES[w.table]["title"]},
        ),
    log:
        result("logs", "render_table_page", "{table}.log"),
    wildcard_constraints:
        table=_alternatives(TABLE_PAGES),
    localrule: True
    conda:
        "../envs/conceptscope.yaml"
    params:
        title=lambda w: TABLE_PAGES[w.table]["title"],
        caption=lambda w: " ".join(TABLE_PAGES[w.table]["caption"].split()),
        query=lambda w: TABLE_PAGES[w.table].get("query"),
    script:
        "../workflow_scripts/render_table_page.py"
