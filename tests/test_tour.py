"""The README's quick tour runs as written: scripts/tour.sh runs its `$ digitlab ...` commands, in order,
in a fresh folder, and these tests hold the script and the README to the same list of commands."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "scripts" / "tour.sh"


def readme_tour_commands(readme: str) -> list[str]:
    """The `$ digitlab ...` lines of the README's "Quick tour" section, comments and spacing removed."""
    section = re.split(r"^## Quick tour$", readme, maxsplit=1, flags=re.MULTILINE)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\$ (digitlab\b.*)$", section, flags=re.MULTILINE)
    return [" ".join(shlex.split(c, comments=True)) for c in commands]


def echoed_commands(output: str) -> list[str]:
    """The commands tour.sh announced before running each ("$ digitlab ..." lines)."""
    return [" ".join(shlex.split(line[2:])) for line in output.splitlines() if line.startswith("$ digitlab")]


def test_readme_parsing():
    text = "## Quick tour\n```console\n$ digitlab show --index 0    # a comment\n  x\n```\n## Next\n$ digitlab no\n"
    assert readme_tour_commands(text) == ["digitlab show --index 0"]


def test_script_announces_the_readme_commands():
    """Fast lane: the commands the script announces (its `say` lines) are the README's, in its order."""
    said = re.findall(r"^say ([^;\n]*)", TOUR.read_text(), flags=re.MULTILINE)
    readme = readme_tour_commands((ROOT / "README.md").read_text())
    assert ["digitlab " + " ".join(shlex.split(s)) for s in said] == readme
    assert len(readme) >= 8  # summary, two trainings, recipes, evaluate, show, predict, serve


@pytest.mark.slow  # two short trainings, an evaluation and a server start: about a minute
def test_tour_runs_as_written(mnist_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TOUR_QUICK": "1", "TOUR_PORT": str(port), "DIGITLAB_DATA_DIR": str(mnist_dir),
           "PYTHONPATH": str(ROOT)}  # this checkout's package, whatever .venv was installed from
    proc = subprocess.run(["bash", str(TOUR)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Every README command ran, in order, and the last one (the server) answered its page and /docs.
    assert echoed_commands(proc.stdout) == readme_tour_commands((ROOT / "README.md").read_text())
    assert "GET /: 200" in proc.stdout and "GET /docs: 200" in proc.stdout
    assert "the tour ran to the end" in proc.stdout


def test_code_layout_names_every_module():
    """The README's "Code layout" table names every module of the package and every benchmark script is named
    somewhere in the README (a newcomer finds the room for a change in one look)."""
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Code layout", 1)[1].split("\n## ", 1)[0]
    modules = [p for p in (ROOT / "digitlab").rglob("*.py") if p.name != "__main__.py"]
    missing = [str(p.relative_to(ROOT)) for p in modules
               if (f"serve/{p.name}" if p.parent.name == "serve" and p.name == "__init__.py" else p.name) not in layout]
    assert not missing, f"not in the README's code layout: {missing}"
    scripts = [p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_")]
    unnamed = [name for name in scripts if name not in readme]
    assert not unnamed, f"benchmarks the README never names: {unnamed}"


def test_readme_sections_appear_once():
    """Each heading once: an edit that pasted a section twice left two sets of figures that disagreed."""
    headings = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(("## ", "### "))]
    repeated = sorted({h for h in headings if headings.count(h) > 1})
    assert not repeated, repeated
