"""README.md is the user's entry point: its commands run as written, its links resolve, it stays short.

Every line of a README code block (indented or fenced) that starts with `bash ` or `.venv/bin/` is a
command; `&&` chains are checked part by part:
- `bash SCRIPT`: the script exists;
- `.venv/bin/snakemake`: a dry run (`-n --quiet`) of the command where its config file exists (a
  config the user writes, such as `my-imagenet.yaml`, is an example and skipped); with `--report` or
  `--profile` only the profile and config files it names must exist (no report, no SLURM);
- `.venv/bin/conceptscope layers|models|datasets|config`: run as written, exit 0;
- `.venv/bin/python SCRIPT` / `-m MODULE`: the script exists / the module is importable.
The example config the skipped commands use is the README's YAML block; it must pass the config check
once its data folder and weight file exist.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SHARED_DATA

README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_LINES = 250
# words that tell how the code got here (that belongs in git), not what it does
HISTORY_WORDS = ("earlier", "the session before", "the day before", "previously", "used to", "now takes", "no longer")
CHECKED_PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))]
CHEAP_CLI = {"layers", "models", "datasets", "config"}
LINK = re.compile(r"\]\(([^)\s]+)\)")


def code_lines(text: str) -> list[str]:
    """The lines of the markdown's code blocks: fenced (any language) or indented by 4+ spaces after a blank line."""
    lines, in_fence, in_indented, previous_blank = [], False, False, True
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
            in_indented = False
        elif in_fence:
            lines.append(stripped)
        elif line.startswith("    ") and stripped and (previous_blank or in_indented):
            in_indented = True
            lines.append(stripped)
        elif stripped:
            in_indented = False
        previous_blank = not stripped
    return lines


def readme_commands() -> list[list[str]]:
    """Each command of the README (a `&&` chain split into its parts) as argv, comments removed."""
    commands = []
    for line in code_lines(README.read_text()):
        if not line.startswith(("bash ", ".venv/bin/")):
            continue
        argv = shlex.split(line, comments=True)
        part: list[str] = []
        for token in [*argv, "&&"]:
            if token == "&&":
                if part and part not in commands:
                    commands.append(part)
                part = []
            else:
                part.append(token)
    return commands


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)


COMMANDS = readme_commands()


def test_readme_has_commands_and_the_ci_test_command():
    assert len(COMMANDS) >= 8, COMMANDS
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == "bash scripts/install.sh && .venv/bin/python -m pytest"
    assert ci in code_lines(README.read_text())
    assert re.search(r"\d+ tests, under \d+ minutes on this 2-core machine", README.read_text())  # the suite's size and time


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(argv) for argv in COMMANDS])
def test_readme_command_runs_as_written(argv):
    program = argv[0]
    if program == "bash":
        assert (ROOT / argv[1]).is_file(), f"{' '.join(argv)}: no script {argv[1]}"
        return
    assert program.startswith(".venv/bin/") and (ROOT / program).is_file(), f"{' '.join(argv)}: no {program}"
    configfile = option(argv, "--configfile")
    if configfile is not None and not (ROOT / configfile).is_file():
        if configfile.startswith(("configs/", "profiles/")) or configfile == "config.yaml":
            pytest.fail(f"{' '.join(argv)}: {configfile} does not exist")
        pytest.skip(f"{configfile} is an example the user writes")
    name = program.removeprefix(".venv/bin/")
    if name == "python":
        if argv[1] == "-m":
            assert importlib.util.find_spec(argv[2]) is not None, f"{' '.join(argv)}: module {argv[2]} not installed"
        else:
            assert (ROOT / argv[1]).is_file(), f"{' '.join(argv)}: no script {argv[1]}"
    elif name == "snakemake":
        profile = option(argv, "--profile")
        if profile is not None:
            assert (ROOT / profile / "config.yaml").is_file(), f"{' '.join(argv)}: no profile {profile}"
        if profile is not None or "--report" in argv:
            return  # no SLURM, no report generation here: the files it names exist
        dry = [*argv, *(["-n"] if "-n" not in argv and "--dry-run" not in argv else []), "--quiet", "--nolock"]
        done = run(dry)
        assert done.returncode == 0, f"{' '.join(dry)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    elif name == "conceptscope":
        assert argv[1] in CHEAP_CLI, f"{' '.join(argv)}: the README shows only {sorted(CHEAP_CLI)} (store and compare need a finished run)"
        done = run(argv)
        assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stderr[-4000:]}"
        assert done.stdout.strip()
    else:
        pytest.fail(f"{' '.join(argv)}: no check for {program}")


def test_readme_example_config_is_valid(tmp_path):
    from conceptscope.config import resolve_config

    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "the README shows one example config"
    raw = yaml.safe_load(textwrap.dedent(blocks[0]))
    imagenette = SHARED_DATA / "imagenette"  # real train/ and val/ wnid folders
    if not imagenette.is_dir():
        pytest.fail(f"real test data missing: {imagenette} (../shared/data beside the project root)")
    (dataset,) = raw["datasets"].values()
    dataset["root"] = str(imagenette)
    (model,) = raw["models"].values()
    weights = tmp_path / Path(model["weights"]).name
    weights.write_bytes(b"")  # the check needs the file to exist; loading it is the job's
    model["weights"] = str(weights)
    config = resolve_config(raw, base_dir=tmp_path)
    assert config["models"][next(iter(raw["models"]))]["layers"] == model["layers"]


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines < MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {MAX_LINES - 1})"


@pytest.mark.parametrize("page", CHECKED_PAGES)
def test_no_history_words(page):
    text = (ROOT / page).read_text()
    found = [(word, text[max(0, m.start() - 40) : m.end() + 40].replace("\n", " "))
             for word in HISTORY_WORDS for m in re.finditer(rf"\b{re.escape(word)}\b", text, re.IGNORECASE)]
    assert not found, f"{page} tells history (it belongs in git): {found}"


@pytest.mark.parametrize("page", CHECKED_PAGES)
def test_relative_links_resolve(page):
    path = ROOT / page
    targets = [t.split("#")[0] for t in LINK.findall(path.read_text()) if not t.startswith(("http://", "https://", "mailto:", "#"))]
    missing = [t for t in targets if t and not (path.parent / t).exists()]
    assert not missing, f"{page} links to missing files: {missing}"


def test_readme_links_every_docs_page():
    linked = {(ROOT / t.split("#")[0]).resolve() for t in LINK.findall(README.read_text()) if t.startswith("docs/")}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
