"""The run's report: the cross-method planted-shortcut summary, tables as HTML pages, the front page.

Every method measures the planted shortcut (a watermark on the training images of one class) in its
own way; `SHORTCUT_MEASURES` reads each from the method's table, and `shortcut_summary` sets the
shortcut-trained model beside its clean twin (same architecture, trained on the clean images,
evaluated on the same watermarked test images) - the `shortcut_summary.csv` of ../shared/DESIGN.md.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import pandas as pd

MEASURE_COLUMNS = ["model", "dataset", "layer", "method", "measure", "value", "chance", "n"]
SUMMARY_COLUMNS = ["model", "clean_twin", "dataset", "method", "measure", "layer", "shortcut_model", "clean_model",
                   "chance", "n_clean", "noise_floor", "verdict"]


def shortcut_pairs(models: dict, datasets: dict) -> list[tuple[str, str, str]]:
    """(shortcut model, clean twin, shortcut dataset) for every twin pair in a resolved config.

    A shortcut model is trained on a dataset with a `shortcut`; its clean twins have the same `arch`
    and `arch_options`, a training set without one, and the shortcut dataset among their evaluation datasets.
    """
    pairs = []
    for name, spec in models.items():
        train = spec.get("train_dataset")
        if not train or not (datasets.get(train) or {}).get("shortcut"):
            continue
        for twin, other in models.items():
            other_train = other.get("train_dataset")
            if (twin != name and other.get("arch") == spec.get("arch") and other_train
                    and (other.get("arch_options") or {}) == (spec.get("arch_options") or {})
                    and not (datasets.get(other_train) or {}).get("shortcut")
                    and train in (other.get("eval_datasets") or [])):
                pairs.append((name, twin, train))
    return pairs


def _measure(frame: pd.DataFrame, method: str, measure: str, value: pd.Series, layer: pd.Series | str = "",
             chance: float = 0.0, n: pd.Series | None = None) -> pd.DataFrame:
    """Rows of MEASURE_COLUMNS. Larger values mean more of the watermark. `chance` is the value of a
    method that ignores the watermark (0 for a share, 1 for a ratio to the box's share, 0.5 for an
    AUC); `n`, where the value is a share of n independent units (images, crops), sizes its noise."""
    out = pd.DataFrame({"model": frame["model"].to_numpy(), "dataset": frame["dataset"].to_numpy()})
    out["layer"] = layer.to_numpy() if isinstance(layer, pd.Series) else layer
    out["method"], out["measure"], out["value"] = method, measure, value.to_numpy(dtype=float)
    out["chance"] = float(chance)
    out["n"] = float("nan") if n is None else n.to_numpy(dtype=float)
    return out


# the verdict's two conditions (report front page, shortcut_summary.csv)
VERDICT_RATIO = 2.0  # the shortcut model's excess over chance is at least this multiple of the clean twin's
VERDICT_SIGMAS = 2.0  # ... and beyond the clean twin's value by this many binomial standard errors (shares)


def noise_floor(clean: float, chance: float, n: float) -> float:
    """The value the shortcut model must exceed beyond the clean twin's ratio condition: the clean
    twin's value plus VERDICT_SIGMAS binomial standard errors of a share of n units (the rate taken
    as at least 1/n, so a clean twin at 0 still has a floor); `chance` where n is unknown."""
    if not n or n != n:  # unknown: not a share of independent units
        return max(clean, chance)
    rate = min(max(clean, 1.0 / n), 1.0)
    return clean + VERDICT_SIGMAS * (rate * (1 - rate) / n) ** 0.5


NO_CLEAN_VALUE = "no clean twin value"  # the verdict of a measure whose shortcut or clean-twin value is missing


def verdict(shortcut: float, clean: float, chance: float, n: float) -> str:
    """'detected' when the shortcut model's excess over chance is at least VERDICT_RATIO times the
    clean twin's (the clean twin's taken as 0 when below chance) and its value is above the noise
    floor; 'not detected' otherwise; 'no clean twin value' when either value is missing."""
    if shortcut != shortcut or clean != clean:
        return NO_CLEAN_VALUE
    ratio_holds = shortcut - chance >= VERDICT_RATIO * max(clean - chance, 0.0) and shortcut > chance
    return "detected" if ratio_holds and shortcut > noise_floor(clean, chance, n) else "not detected"


def _prediction(tables: dict) -> pd.DataFrame:
    frame = tables["models"]
    frame = frame[(frame["split"] == "test_watermarked") & frame["shortcut_rate"].notna()]
    return _measure(frame, "prediction", "watermarked test images of other classes predicted as the shortcut class",
                    frame["shortcut_rate"], n=frame["n_images"] if "n_images" in frame else None)


def _crops_on_watermark(table: str, method: str) -> Callable[[dict], pd.DataFrame]:
    def read(tables: dict) -> pd.DataFrame:
        frame = tables[table]
        frame = frame[frame["shortcut_class"].isin([True, "True", "true", 1])]  # the concepts of the shortcut class
        keys = ["model", "dataset", "layer"]
        grouped = frame.groupby(keys, as_index=False)
        crops = grouped["share_overlapping_watermark"].mean().merge(grouped["top_m"].sum(), on=keys)
        parts = [_measure(crops, method, "top crops of the shortcut class's concepts overlapping the watermark",
                          crops["share_overlapping_watermark"], crops["layer"], n=crops["top_m"])]
        if "importance_share" in frame:
            # a concept "shows the watermark" when most of its top crops overlap it (paper Sec. 4.2 reads
            # a concept off its crops); its share of the class's NMF importance says how much the class uses it
            marked = frame.assign(weight=frame["importance_share"].where(frame["share_overlapping_watermark"] > 0.5, 0.0))
            groups = keys + [c for c in ("class", "against") if c in frame]  # one class, or one contrast pair
            weight = marked.groupby(groups, as_index=False)["weight"].sum().groupby(keys, as_index=False)["weight"].mean()
            parts.append(_measure(weight, method, "share of the shortcut class's concept importance held by concepts whose top crops show the watermark",
                                  weight["weight"], weight["layer"]))
        return pd.concat(parts)
    return read


def _cladec(tables: dict) -> pd.DataFrame:
    # the main decoder of each layer: the variant of the alpha that cladec_layers reports
    main = tables["cladec_layers"][["model", "dataset", "layer", "alpha"]].drop_duplicates()
    main["variant"] = [f"cladec_a{alpha:g}" for alpha in main["alpha"]]
    frame = tables["cladec_watermark"].merge(main[["model", "dataset", "layer", "variant"]], on=["model", "dataset", "layer", "variant"])
    return pd.concat([
        _measure(frame, "cladec", "watermark kept in the ClaDec reconstruction", frame["watermark_kept"], frame["layer"]),
        # the error, not inverted, would read backwards here (larger = less of the watermark)
        _measure(frame, "cladec", "watermark box reconstructed as faithfully as on the clean twin (box error clean / watermarked)",
                 frame["box_error_clean_over_marked"], frame["layer"]),
    ])


def _nave(tables: dict) -> pd.DataFrame:
    frame = tables["nave_watermark"]
    parts = []
    for (method, clustering, k, strategy), part in frame.groupby(["method", "clustering", "k", "strategy"], sort=False):
        k = int(k) if float(k).is_integer() else k  # read as float where the table has empty cells
        shape = "pixels match the watermark square (mask IoU" if strategy == "mask" else f"{strategy} box covers the watermark (IoU"
        name = f"images where a segment's {shape} >= 0.5; {method}, {clustering}, K={k})"
        parts.append(_measure(part, "nave", name, part["covered_rate"], part["layers"], n=part["n_images"]))
    return pd.concat(parts) if parts else pd.DataFrame(columns=MEASURE_COLUMNS)


def _dora(tables: dict) -> pd.DataFrame:
    frame = tables["dora_probing"]
    best = frame.groupby(["model", "dataset", "layer"], as_index=False)["probing_auc"].max()
    flagged = frame[(frame["distance"] == "ea_n") & (frame["mode"] == "layerwise")]
    # where the watermark's detectors stand among the layer's outliers: 1 = the most anomalous, 0 = the least
    flagged = flagged.assign(percentile=1 - (flagged["outlier_rank"] - 1) / (flagged["n_representations"] - 1).clip(lower=1))
    keys = ["model", "dataset", "layer"]
    grouped = flagged.groupby(keys, as_index=False)
    flagged = grouped["flagged"].mean().merge(grouped["percentile"].mean(), on=keys).merge(
        grouped["representation"].nunique().rename(columns={"representation": "n"}), on=keys)
    return pd.concat([
        _measure(best, "dora", "best probing AUC of a representation (watermarked vs clean twins)", best["probing_auc"], best["layer"],
                 chance=0.5),
        # both are means over the top representations of values in [0, 1]: their noise is at most a
        # binomial share's over that many representations (the detectors rank the same representations)
        _measure(flagged, "dora", "top probing representations flagged as outliers (EA_n layer-wise, all detectors)",
                 flagged["flagged"], flagged["layer"], n=flagged["n"]),
        _measure(flagged, "dora", "top probing representations' outlier percentile (1 = most anomalous; EA_n layer-wise, all detectors)",
                 flagged["percentile"], flagged["layer"], chance=0.5, n=flagged["n"]),
    ])


def _cluscam(tables: dict) -> pd.DataFrame:
    frame = tables["cluscam_watermark"]
    parts = [_measure(part, method, "saliency in the watermark box / the box's share of the image", part["ratio"], part["layer"], chance=1.0)
             for method, part in frame.groupby("method", sort=False)]
    return pd.concat(parts) if parts else pd.DataFrame(columns=MEASURE_COLUMNS)


# table name(s) each reader needs -> reader; a reader returns rows of MEASURE_COLUMNS
SHORTCUT_MEASURES: dict[str, tuple[tuple[str, ...], Callable[[dict], pd.DataFrame]]] = {
    "prediction": (("models",), _prediction),
    "concepts": (("concepts_watermark",), _crops_on_watermark("concepts_watermark", "concepts")),
    "contrast": (("contrast_watermark",), _crops_on_watermark("contrast_watermark", "contrast")),
    "cladec": (("cladec_watermark", "cladec_layers"), _cladec),
    "nave": (("nave_watermark",), _nave),
    "dora": (("dora_probing",), _dora),
    "cluscam": (("cluscam_watermark",), _cluscam),
}


# the tables the measures read (rule summarize_shortcut needs only these)
SHORTCUT_TABLES = sorted({name for names, _ in SHORTCUT_MEASURES.values() for name in names})


def shortcut_summary(tables: dict[str, pd.DataFrame], pairs: list[tuple[str, str, str]]) -> pd.DataFrame:
    """One row per shortcut model x method x measure x layer: its value beside its clean twin's.

    `tables` maps a table name (file stem under tables/) to its frame; methods whose tables are
    missing or empty are left out. Columns: model, clean_twin, dataset, method, measure, layer,
    shortcut_model, clean_model.
    """
    columns = SUMMARY_COLUMNS
    measures = []
    for names, read in SHORTCUT_MEASURES.values():
        if all(name in tables and len(tables[name]) for name in names):
            measures.append(read(tables))
    if not measures or not pairs:
        return pd.DataFrame(columns=columns)
    measures = pd.concat(measures, ignore_index=True)
    measures["layer"] = measures["layer"].fillna("").astype(str)
    for column in ("chance", "n"):
        if column not in measures:
            measures[column] = 0.0 if column == "chance" else float("nan")
    measures["chance"] = measures["chance"].fillna(0.0)
    keys = ["dataset", "method", "measure", "layer", "chance"]
    parts = []
    for shortcut, clean, dataset in pairs:
        mine, theirs = (measures.loc[(measures["model"] == m) & (measures["dataset"] == dataset), keys + ["value", "n"]] for m in (shortcut, clean))
        merged = mine.drop(columns="n").merge(theirs, on=keys, how="outer", suffixes=("", "_clean"), sort=False)
        merged = merged.rename(columns={"value": "shortcut_model", "value_clean": "clean_model", "n": "n_clean"})
        parts.append(merged.assign(model=shortcut, clean_twin=clean))
    summary = pd.concat(parts, ignore_index=True)
    summary["noise_floor"] = [noise_floor(c, ch, n) if c == c else float("nan")
                              for c, ch, n in zip(summary["clean_model"], summary["chance"], summary["n_clean"])]
    summary["verdict"] = [verdict(s, c, ch, n) for s, c, ch, n in
                          zip(summary["shortcut_model"], summary["clean_model"], summary["chance"], summary["n_clean"])]
    return summary[columns]


def table_page(frame: pd.DataFrame, title: str, caption: str, query: str | None = None, max_rows: int = 2000,
               float_digits: int = 4) -> str:
    """A self-contained HTML page showing one table (sortable by clicking a column header).

    `query` (a pandas query, e.g. "rank <= 10") and `max_rows` keep long tables readable in a browser;
    the page says how many of the table's rows it shows.
    """
    total = len(frame)
    if query:
        frame = frame.query(query)
    shown = frame.head(max_rows)
    note = f"{len(shown)} of {total} rows" + (f" (those with {query})" if query else "") if len(shown) < total else f"{total} rows"
    body = shown.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.{float_digits}g}", border=0, classes="table")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1rem; color: #222; }}
p.caption {{ max-width: 60rem; }}
table.table {{ border-collapse: collapse; font-size: 0.85rem; }}
table.table th, table.table td {{ padding: 0.2rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; }}
table.table th {{ background: #f4f4f4; cursor: pointer; position: sticky; top: 0; }}
table.table tr:hover td {{ background: #fafae0; }}
</style></head>
<body><h2>{html.escape(title)}</h2><p class="caption">{html.escape(caption)}</p>
<p>{html.escape(note)}; click a column header to sort.</p>
{body}
<script>
document.querySelectorAll("table.table th").forEach((th, col) => th.addEventListener("click", () => {{
  const tbody = th.closest("table").tBodies[0];
  const rows = Array.from(tbody.rows);
  const asc = th.dataset.asc !== "1"; th.dataset.asc = asc ? "1" : "0";
  const key = r => {{ const t = r.cells[col].textContent; const n = parseFloat(t); return isNaN(n) ? t : n; }};
  rows.sort((a, b) => {{ const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); }});
  rows.forEach(r => tbody.appendChild(r));
}}));
</script></body></html>
"""


def _rst_table(frame: pd.DataFrame) -> str:
    """A reStructuredText list-table of a frame (strings as shown)."""
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [list(frame.columns)] + frame.astype(str).values.tolist():
        for j, cell in enumerate(row):
            cell = str(cell).replace("\n", " ") or " "
            lines.append(f"   {'* -' if j == 0 else '  -'} {cell}")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "" if pd.isna(value) else f"{value:.3g}" if isinstance(value, float) else str(value)


# Snakemake's viewer shows the front page at 32rem beside the workflow graph, centred in a screen-high
# box, so a wider table runs under the graph and a long page's top and left are cut off. This style
# gives the page's text the width, puts the graph below it, and scrolls a too-wide table in its own box.
FRONT_PAGE_STYLE = """<style>
#app div.h-screen:has(#rulegraph) { align-items: flex-start; justify-content: flex-start; }
#app div.flex:has(> div > .prose) { flex-direction: column; }
#app .prose { max-width: 80rem; }
#app .prose table { display: block; overflow-x: auto; max-width: 100%; }
#app .prose figure { margin: 0.5rem 0 1.5rem; }
#app .prose figure img { max-width: 100%; max-height: 32rem; height: auto; }
</style>"""

METHOD_NAMES = {"prediction": "prediction (ground truth)", "concepts": "class concepts", "contrast": "class contrasting",
                "cladec": "ClaDec", "nave": "NAVE", "dora": "DORA", "cluscam": "ClusCAM", "gradcam": "Grad-CAM",
                "scorecam": "Score-CAM", "ablationcam": "Ablation-CAM", "rise": "RISE", "occlusion": "occlusion"}


def verdict_by_method(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per method, one column per shortcut model: 'detected' (every measure), 'detected by k
    of n measures' or 'not detected (n measures)' over the measures with a clean twin value, the
    others counted apart ('no clean twin value'); empty where the model does not run the method."""
    def measures(count: int) -> str:
        return f"{count} measure{'s' * (count > 1)}"

    rows = {}
    for (method, model), part in summary.groupby(["method", "model"], sort=False):
        missing = int((part["verdict"] == NO_CLEAN_VALUE).sum())
        k, n = int((part["verdict"] == "detected").sum()), len(part) - missing
        parts = [] if not n else ["detected" if k == n else f"detected by {k} of {measures(n)}" if k else f"not detected ({measures(n)})"]
        parts += [f"{NO_CLEAN_VALUE} ({measures(missing)})"] * bool(missing)
        cell = "; ".join(parts)
        rows.setdefault(METHOD_NAMES.get(method, method), {})[model] = cell
    order = {name: i for i, name in enumerate(METHOD_NAMES.values())}  # the ground truth first, then method by method
    frame = pd.DataFrame.from_dict(rows, orient="index").fillna("")
    frame = frame.loc[sorted(frame.index, key=lambda name: order.get(name, len(order)))]
    return frame.rename_axis("method").reset_index()


def front_figure_file(path: str | Path, shortcut_class: int | None) -> Path | None:
    """The PNG a front-page entry shows: the file itself, or in a concepts/contrast crop folder the
    figure of the shortcut class (`class_XXXX.png`, `class_XXXX_vs_YYYY.png`), else its first figure."""
    path = Path(path)
    if path.is_file():
        return path
    figures = sorted((path / "figures").glob("*.png"))
    if shortcut_class is not None:
        figures = sorted(figures, key=lambda f: not f.stem.startswith(f"class_{shortcut_class:04d}"))
    return figures[0] if figures else None


def thumbnail_uri(path: str | Path, max_size: tuple[int, int] = (1100, 700)) -> str:
    """A PNG data URI of the figure, shrunk to fit `max_size` (width, height) pixels."""
    import base64
    import io

    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail(max_size)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _raw_html(markup: str) -> list[str]:
    return [".. raw:: html", ""] + ["   " + line for line in markup.splitlines()] + [""]


def front_page(config: dict, models_table: pd.DataFrame, summary: pd.DataFrame, tables: list[str],
               figures: list[dict] | None = None) -> str:
    """The report's front page (reStructuredText): the planted shortcut's verdict by method, one figure
    per method, then what ran, the accuracies and every shortcut measure side by side.

    `figures`: dicts of method, model, dataset, layer and path (a PNG, or a crop folder) as
    `rules/common.smk:front_figures` chooses them; the images are embedded as thumbnails.
    """
    models = config["models"]
    lines = ["conceptscope run", "================", "", *_raw_html(FRONT_PAGE_STYLE),
             "Five concept-explanation methods over one activation store: class concepts and class contrasting, "
             "ClaDec, NAVE, DORA and ClusCAM (papers: ``../shared/papers``). Each result in the menu has a caption saying "
             "what it shows and which table or figure of its paper it corresponds to; the categories group them by "
             "method, the subcategories by model.", "",
             f"Results directory ``{config['results']}``, seed {config['seed']}, device ``{config['device']}``.", ""]
    lines += ["The planted shortcut, method by method", "--------------------------------------", ""]
    if len(summary):
        lines += ["A watermark is planted on the training images of one class; each shortcut-trained model is set beside "
                  "its clean twin (the same architecture trained without it) on the same watermarked test images. A measure "
                  f"says **detected** when the shortcut model's excess over chance is at least {VERDICT_RATIO:g}x the clean "
                  f"twin's and above the noise floor (the clean twin's value plus {VERDICT_SIGMAS:g} binomial standard "
                  "errors); every measure is listed below.", "", _rst_table(verdict_by_method(summary)), ""]
    else:
        lines += ["No shortcut-trained model with a clean twin in this run.", ""]
    if figures:
        lines += ["One figure per method", "---------------------", ""]
        for entry in figures:
            dataset = config["datasets"].get(entry["dataset"]) or {}
            shortcut_class = (dataset.get("shortcut") or {}).get("class")
            path = front_figure_file(entry["path"], shortcut_class)
            if path is None:
                continue
            where = ", ".join(part for part in (entry["model"], entry["dataset"], entry.get("layer"), path.stem) if part)
            # docutils refuses lines over 10,000 characters; a data URI's base64 may hold line breaks
            uri = thumbnail_uri(path)
            uri = "\n".join(uri[i:i + 76] for i in range(0, len(uri), 76))
            lines += _raw_html(f'<figure><figcaption><b>{html.escape(entry["method"])}</b> ({html.escape(where)})</figcaption>'
                               f'<img alt="{html.escape(entry["method"])}" src="{uri}"></figure>')
    lines += ["Models", "------", ""]
    rows = []
    for name, spec in models.items():
        rows.append({"model": name, "architecture": spec.get("arch", ""),
                     "weights": spec.get("weights") or f"trained on {spec.get('train_dataset')}",
                     "evaluated on": ", ".join(spec.get("eval_datasets") or [spec.get("train_dataset") or ""]),
                     "layers": ", ".join(spec.get("layers") or [])})
    lines += [_rst_table(pd.DataFrame(rows)), "", "Datasets: " + ", ".join(
        f"``{name}`` ({spec['kind']}{', planted shortcut on class ' + str(spec['shortcut']['class']) if spec.get('shortcut') else ''})"
        for name, spec in config["datasets"].items()), ""]
    lines += ["Accuracy", "--------", "", "Top-1 on each test split (``tables/models.csv``); shortcut rate: share of the "
              "watermarked test images of the other classes predicted as the shortcut class.", ""]
    if len(models_table):
        shown = models_table[[c for c in ["model", "dataset", "split", "n_images", "top1", "top1_non_shortcut", "shortcut_rate"]
                              if c in models_table]].copy()
        for column in shown.columns:
            shown[column] = shown[column].map(_fmt)
        lines += [_rst_table(shown), ""]
    if len(summary):
        lines += ["Every shortcut measure", "----------------------", "",
                  "One row per measure and layer (``tables/shortcut_summary.csv``); larger values mean more of the watermark; "
                  "chance is 0 for a share, 1 for a ratio to the box's share of the image, 0.5 for an AUC.", ""]
        shown = summary.copy()
        for column in ("shortcut_model", "clean_model", "noise_floor"):
            shown[column] = shown[column].map(_fmt)
        for (model, clean), part in shown.groupby(["model", "clean_twin"], sort=False):
            lines += [f"**{model}** (shortcut) vs **{clean}** (clean twin):", "",
                      _rst_table(part[["method", "measure", "layer", "shortcut_model", "clean_model", "noise_floor", "verdict"]].rename(
                          columns={"shortcut_model": model, "clean_model": clean})), ""]
    lines += ["Tables", "------", "", "Every table of the run, each a page of the report: " + ", ".join(f"``{t}``" for t in tables) + ".", ""]
    return "\n".join(lines)


def read_tables(paths: list[str | Path]) -> dict[str, pd.DataFrame]:
    """Tables by file stem; an empty CSV (header only) reads as an empty frame."""
    return {Path(path).stem: pd.read_csv(path) for path in paths}
