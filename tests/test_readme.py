"""The README's transcripts and install commands are checked against the real thing.

- every ``pip install`` in the README, the changelog, the examples and the package's
  messages names our distribution (``simpleflow-db``) with extras it has, the local
  checkout (``.``/``-e .``) with extras it has, or a package pyproject.toml declares;
- the quickstart output shown in the README is what ``examples/quickstart.py`` prints,
  up to run ids and the temp directory.

When one of these fails, update the README (or the command) to match.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
DISTRIBUTION: str = PROJECT["name"]
EXTRAS: set[str] = set(PROJECT.get("optional-dependencies", {}))


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


#: every distribution pyproject.toml names as a dependency, in any extra
DECLARED = {_requirement_name(r) for r in PROJECT["dependencies"]} | {
    _requirement_name(r) for reqs in PROJECT.get("optional-dependencies", {}).values() for r in reqs
}

#: where install commands are written for users
SOURCES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "examples").glob("*.py")),
           *sorted((REPO / "simpleflow").rglob("*.py"))]

_PIP_INSTALL = re.compile(r"pip install ([^`\n;&|)\"#]+)")


def pip_install_commands() -> list[tuple[str, str]]:
    """(where, arguments) of every ``pip install ...`` in SOURCES."""
    found = []
    for path in SOURCES:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for match in _PIP_INSTALL.finditer(line):
                found.append((f"{path.relative_to(REPO)}:{lineno}", match.group(1).strip()))
    return found


def problems_with(arguments: str) -> list[str]:
    """What is wrong with the arguments of one ``pip install`` (empty when nothing)."""
    try:
        words = shlex.split(arguments, comments=True)
    except ValueError as error:
        return [f"cannot parse {arguments!r}: {error}"]
    problems = []
    for word in words:
        if word.startswith("-"):
            continue
        name, _, extras_part = word.partition("[")
        extras = {e.strip() for e in extras_part.rstrip("]").split(",") if e.strip()} if extras_part else set()
        if name in (".", "./") or name == DISTRIBUTION:
            problems += [f"{word}: no extra {extra!r} in pyproject.toml" for extra in sorted(extras - EXTRAS)]
        elif _requirement_name(name) == "simpleflow":
            problems.append(f"{word}: 'simpleflow' on PyPI is another project; ours is {DISTRIBUTION!r}")
        elif name.endswith(".whl"):
            problems += [f"{word}: no extra {extra!r} in pyproject.toml" for extra in sorted(extras - EXTRAS)]
        elif _requirement_name(name) not in DECLARED:
            problems.append(f"{word}: not a distribution pyproject.toml declares (add it to an extra, or fix the name)")
    return problems


def test_the_readme_installs_our_distribution() -> None:
    assert f"pip install {DISTRIBUTION}" in README
    commands = pip_install_commands()
    assert any(where.startswith("README.md") for where, _ in commands)
    problems = [f"{where}: {problem}" for where, arguments in commands for problem in problems_with(arguments)]
    assert problems == []


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ("simpleflow", "another project"),
        ("'simpleflow[prometheus]'", "another project"),
        ("'simpleflow-db[nosuchextra]'", "no extra 'nosuchextra'"),
        ("-q -e '.[dev,nosuchextra]'", "no extra 'nosuchextra'"),
        ("simpleflow-dbb", "not a distribution pyproject.toml declares"),
    ],
)
def test_the_install_check_catches_wrong_names(arguments: str, complaint: str) -> None:
    (problem,) = problems_with(arguments)
    assert complaint in problem


def test_the_install_check_accepts_what_exists() -> None:
    assert problems_with(f"-q -e '.[dev]' {DISTRIBUTION} '{DISTRIBUTION}[prometheus]' fastapi uvicorn") == []


# -- the quickstart transcript ------------------------------------------------------------------


def readme_block(first_line: str) -> list[str]:
    """The lines of the README code block whose first line is ``first_line``."""
    lines = README.splitlines()
    start = lines.index(first_line)
    assert lines[start - 1].startswith("```"), f"{first_line!r} does not open a code block"
    end = lines.index("```", start)
    return lines[start + 1 : end]


def normalise(line: str) -> str:
    line = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<run id>", line)
    return re.sub(r"…[0-9a-f]{8}", "…xxxxxxxx", line)  # same width: the table's columns stay checked


def test_readme_quickstart_output_is_what_the_quickstart_prints(tmp_path: Path) -> None:
    shown = [normalise(line) for line in readme_block("$ python examples/quickstart.py")]
    env = {k: v for k, v in os.environ.items() if k != "SIMPLEFLOW_DATABASE_URL"}
    env["TMPDIR"] = str(tmp_path)  # the default database goes to the temp dir; the README shows /tmp
    proc = subprocess.run(
        [sys.executable, "examples/quickstart.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    stdout = [normalise(line.replace(str(tmp_path), "/tmp")) for line in proc.stdout.splitlines()]
    stderr = [normalise(line) for line in proc.stderr.splitlines()]
    # The README interleaves the log lines (stderr) where they appear; their order
    # depends on the worker threads, so they are compared as a set.
    assert [line for line in shown if not line.startswith("  log: ")] == stdout
    assert sorted(line for line in shown if line.startswith("  log: ")) == sorted(stderr)
