"""The HTML report in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`
through selenium; nothing is downloaded) displays every result the way the report's viewer does."""

from __future__ import annotations

from pathlib import Path


def browser_check(report: str | Path, screenshots: str | Path | None = None, timeout: float = 60.0,
                  chromium: str = "/usr/bin/chromium", chromedriver: str = "/usr/bin/chromedriver") -> dict:
    """Open a Snakemake HTML report in headless Chromium and display every result the way its viewer does.

    Each figure must decode (an <img> with a natural width) and each HTML page (the table pages) must
    load in the viewer's frame; returns counts and the failures, and, with `screenshots`, saves the
    front page, the first figure and the first table page there as PNG. Needs `selenium` and Debian's
    `chromium` + `chromium-driver` (nothing is downloaded).
    """
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(screenshots) if screenshots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    driver = _open(report, (1800, 1100), timeout, chromium, chromedriver)
    try:
        front = driver.execute_script("return document.querySelector('#app').innerText")
        if shots:
            driver.save_screenshot(str(shots / "front_page.png"))
        entries = driver.execute_script("return Object.entries(results).map(([p, r]) => [p, r.mime_type, r.caption.length])")
        status = {"results": len(entries), "figures": 0, "figures_loaded": 0, "pages": 0, "pages_loaded": 0,
                  "captions": sum(1 for *_, caption in entries if caption > 0), "failures": [], "front_page_text": front}
        # the element the viewer shows a result in: an <img> or an <iframe> whose src is the result's data URI
        shown = ("const uri = results[arguments[0]].data_uri;"
                 "return Array.from(document.querySelectorAll('#app ' + arguments[1])).find(e => e.getAttribute('src') === uri) || null;")
        for path, mime, _ in entries:
            kind = "figures" if mime.startswith("image/") else "pages" if mime == "text/html" else None
            if kind is None:
                continue
            status[kind] += 1
            # the viewer's own path: the same call its "view" button makes
            driver.execute_script("new ToggleViewManager(app).handleSelectedResult(arguments[0])", path)
            tag = "img" if kind == "figures" else "iframe"
            try:
                element = WebDriverWait(driver, 20).until(lambda d: d.execute_script(shown, path, tag))
                if kind == "figures":
                    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return arguments[0].complete", element))
                    loaded = driver.execute_script("return arguments[0].naturalWidth", element) > 0
                else:
                    driver.switch_to.frame(element)
                    try:
                        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")
                        loaded = bool(driver.find_elements("css selector", "table"))
                    finally:
                        driver.switch_to.default_content()
            except TimeoutException:  # not shown in time: a failure to report, not to raise
                loaded = False
            if loaded:
                status[f"{kind}_loaded"] += 1
                if shots and status[f"{kind}_loaded"] == 1:
                    driver.save_screenshot(str(shots / f"first_{kind[:-1]}.png"))
            else:
                status["failures"].append(path)
        return status
    finally:
        driver.quit()


def _open(report: str | Path, window: tuple[int, int], timeout: float, chromium: str, chromedriver: str):
    """A headless Chromium (selenium driver) with the report open and its viewer rendered."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    report = Path(report).resolve()
    for path, what in ((report, "report"), (Path(chromium), "chromium"), (Path(chromedriver), "chromedriver")):
        if not path.exists():
            raise FileNotFoundError(f"{what} not found: {path}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                 f"--window-size={window[0]},{window[1]}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        driver.set_page_load_timeout(timeout)
        driver.get(report.as_uri())
        WebDriverWait(driver, timeout).until(
            lambda d: d.execute_script("return typeof app !== 'undefined' && document.querySelector('#app').innerText.length > 0"))
        # the viewer fades its menu in (CSS transitions): wait until nothing moves
        WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
            "return document.getAnimations().every(a => a.playState !== 'running')"))
    except BaseException:
        driver.quit()
        raise
    return driver


# Each table, figure and the title of the front page, scrolled into view: its box (for a table, each
# cell of its header row) must be displayed, must not intersect the workflow graph, and the element
# on top at its corners and centre must be itself, so nothing covers or clips it.
_LAYOUT_SCRIPT = """
const graph = document.querySelector('#rulegraph');
const items = Array.from(document.querySelectorAll('#app .prose h1, #app .prose table, #app .prose figure img'));
const problems = [];
for (const el of items) {
  const text = el.tagName === 'IMG' ? el.alt : el.innerText;
  const label = el.tagName.toLowerCase() + ' "' + text.replace(/\\s+/g, ' ').slice(0, 50) + '"';
  const parts = el.tagName === 'TABLE' ? Array.from(el.rows[0].cells) : [el];
  parts[0].scrollIntoView({block: 'center', inline: 'nearest'});
  const g = graph ? graph.getBoundingClientRect() : null;
  for (const part of parts) {
    const r = part.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) { problems.push(label + ': not displayed'); break; }
    if (g && g.width > 0 && g.height > 0 && r.left < g.right && g.left < r.right && r.top < g.bottom && g.top < r.bottom) {
      problems.push(label + ': overlaps the workflow graph'); break;
    }
    const points = [[r.left + 2, r.top + 2], [r.right - 2, r.top + 2], [(r.left + r.right) / 2, (r.top + r.bottom) / 2],
                    [r.left + 2, r.bottom - 2], [r.right - 2, r.bottom - 2]];
    const hidden = points.find(([x, y]) => { const hit = document.elementFromPoint(x, y); return !(hit && part.contains(hit)); });
    if (hidden) { problems.push(label + ': cut off or covered at (' + hidden.map(Math.round).join(', ') + ')'); break; }
  }
}
return {checked: items.length, tables: items.filter(e => e.tagName === 'TABLE').length,
        figures: items.filter(e => e.tagName === 'IMG').length, problems: problems};
"""


def front_page_layout(report: str | Path, window: tuple[int, int] = (1400, 1000), screenshot: str | Path | None = None,
                      timeout: float = 60.0, chromium: str = "/usr/bin/chromium", chromedriver: str = "/usr/bin/chromedriver") -> dict:
    """Is every table, figure and the title of the report's front page readable in a window of this size?

    Returns {checked, tables, figures, problems}: a problem names the element and whether it is not
    displayed, overlaps the workflow graph, or is cut off or covered (another element on top at one of
    its corners or its centre, or a point outside the window). With `screenshot`, saves the front page
    (scrolled to its top) there as PNG.
    """
    driver = _open(report, window, timeout, chromium, chromedriver)
    try:
        status = driver.execute_script(_LAYOUT_SCRIPT)
        if screenshot:
            driver.execute_script("document.querySelector('#app .prose h1, #app .prose').scrollIntoView({block: 'start'})")
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
        return status
    finally:
        driver.quit()
