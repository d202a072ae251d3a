"""The README's transcripts and install commands are checked against the real thing.

- every ``pip install`` in the README, the changelog, the examples and the package's
  messages names our distribution (``simpleflow-db``) with extras it has, the local
  checkout (``.``/``-e .``) with extras it has, or a package pyproject.toml declares;
- the quickstart output shown in the README is what ``examples/quickstart.py`` prints,
  up to run ids and the temp directory.

When one of these fails, update the README (or the command) to match.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
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
SOURCES = [
    REPO / "README.md",
    REPO / "CHANGELOG.md",
    *sorted((REPO / "examples").glob("*.py")),
    *sorted((REPO / "simpleflow").rglob("*.py")),
]

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
    assert problems_with(f"'{DISTRIBUTION}[otel,web]' '{DISTRIBUTION}[async]' 'dist/x.whl[otel,web]' aiosqlite") == []


def test_the_readme_documents_every_extra() -> None:
    """Each extra a user may want is named in an install command of the README."""
    named = {e for where, args in pip_install_commands() if where.startswith("README.md") for e in _extras(args)}
    assert EXTRAS - {"dev"} <= named, f"extras no README install command names: {sorted(EXTRAS - {'dev'} - named)}"


def _extras(arguments: str) -> set[str]:
    return {
        extra.strip()
        for word in shlex.split(arguments, comments=True)
        if "[" in word
        for extra in word.partition("[")[2].rstrip("]").split(",")
    }


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


# -- the command-line session ---------------------------------------------------------------------

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_VOLATILE = [
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?Z?"), "<time>"),
    (re.compile(r"\d+(?:\.\d+)?s ago"), "<age> ago"),
    (re.compile(r"retrying in \d+(?:\.\d+)?s"), "retrying in <delay>"),  # the retry policy's jitter
]


def session_steps(lines: list[str]) -> list[tuple[str, list[str], int]]:
    """(command, the output shown under it, blank lines after it) for each ``$ `` line of a console block."""
    steps: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return [
        (command, _strip_blank_tail(output), len(output) - len(_strip_blank_tail(output))) for command, output in steps
    ]


def _strip_blank_tail(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _normalise_session_line(line: str, host: str, pid: str | None) -> str:
    for pattern, replacement in _VOLATILE:
        line = pattern.sub(replacement, line)
    words = line.split()
    if pid is not None and len(words) > 3 and words[1] == host and words[2] == pid:  # the worker registry row
        words[1:3] = ["<host>", "<pid>"]
    return " ".join(words)  # column widths follow the values; the values are what is checked


def _quiet(url: str, timeout: float = 20.0) -> None:
    """Wait until the worker has nothing due left (the README's reader waits a moment too)."""
    import time
    from datetime import datetime, timezone

    from simpleflow import Client
    from simpleflow.core.errors import SimpleflowError

    deadline = time.monotonic() + timeout
    with Client(url) as client:
        while time.monotonic() < deadline:
            try:
                runs = client.list_runs(limit=1000)
            except (SimpleflowError, Exception):  # not migrated yet
                return
            now = datetime.now(timezone.utc)
            if not [r for r in runs if r.status not in ("succeeded", "failed", "cancelled") and r.run_at <= now]:
                return
            time.sleep(0.1)
    raise AssertionError("the worker did not finish the due runs in time")


#: Set to 1 to write what the replay printed into the README's session instead of failing.
UPDATE_ENV = "SIMPLEFLOW_UPDATE_README"


def test_readme_cli_session_is_what_the_commands_print(tmp_path: Path) -> None:
    """The README's session replayed in one bash, command by command, in a fresh directory.

    Run ids shown in the README are mapped to the ids this replay gets, in order of
    appearance; times, heartbeat ages and the worker's host and pid are volatile, and
    column widths follow them. With SIMPLEFLOW_UPDATE_README=1 the README's block is
    rewritten with what the commands printed.
    """
    readme_lines = README.splitlines()
    app_start = readme_lines.index("# app.py")
    app_end = readme_lines.index("```", app_start)
    (tmp_path / "app.py").write_text("\n".join(readme_lines[app_start:app_end]) + "\n")
    console_start = readme_lines.index("$ export SIMPLEFLOW_DATABASE_URL=sqlite:///app.db")
    assert readme_lines[console_start - 1] == "```console"
    console_end = readme_lines.index("```", console_start)
    steps = session_steps(readme_lines[console_start:console_end])

    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPLEFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the `simpleflow` command
    env["PYTHONPATH"] = str(REPO)
    bash = subprocess.Popen(
        ["bash", "--norc", "--noprofile"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert bash.stdin is not None and bash.stdout is not None
    bash.stdin.write("exec 2>&1\n")
    ids: dict[str, str] = {}  # README id -> this replay's id
    url = f"sqlite:///{tmp_path}/app.db"
    host = socket.gethostname()
    differences: list[str] = []
    replayed: list[str] = []  # the block as this replay printed it
    try:
        for n, (shown_command, shown, blank_lines) in enumerate(steps):
            command = shown_command
            for readme_id, real_id in ids.items():
                command = command.replace(readme_id, real_id)
            marker = f"__step_{n}_done__"
            bash.stdin.write(f"{command}\necho {marker}\n")
            bash.stdin.flush()
            printed: list[str] = []
            while (line := bash.stdout.readline()) and line.rstrip("\n") != marker:
                printed.append(line.rstrip("\n"))
            assert line, f"bash ended during {command!r}:\n" + "\n".join(printed)
            printed = _strip_blank_tail(printed)
            # Learn the ids: the same place in the README's output and in ours.
            for shown_line, printed_line in zip(shown, printed, strict=False):
                for readme_id, real_id in zip(_UUID.findall(shown_line), _UUID.findall(printed_line), strict=False):
                    if readme_id not in shown_command:  # an id the reader typed stays itself
                        ids.setdefault(readme_id, real_id)
            pid_match = re.search(r"^media-1\s+\S+\s+(\d+)", "\n".join(printed), re.M)
            expected = []
            for shown_line in shown:
                for readme_id, real_id in ids.items():
                    shown_line = shown_line.replace(readme_id, real_id)
                readme_pid = re.match(r"media-1\s+vm\s+(\d+)\s", shown_line)
                expected.append(_normalise_session_line(shown_line, "vm", readme_pid.group(1) if readme_pid else None))
            actual = [
                _normalise_session_line(line, host, pid_match.group(1) if pid_match else None) for line in printed
            ]
            if actual == expected:
                replayed += [f"$ {shown_command}", *shown, *[""] * blank_lines]
            else:  # what was printed, with the README's ids where it has them
                for readme_id, real_id in ids.items():
                    printed = [line.replace(real_id, readme_id) for line in printed]
                replayed += [f"$ {shown_command}", *printed, *[""] * blank_lines]
                differences.append(
                    f"$ {shown_command}\n--- README\n" + "\n".join(shown) + "\n--- printed\n" + "\n".join(printed)
                )
            _quiet(url)
    finally:
        # bash and the worker it started in the background share bash's process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bash.pid, signal.SIGKILL)
        bash.wait()
    if differences and os.environ.get(UPDATE_ENV) == "1":
        new = [*readme_lines[:console_start], *_strip_blank_tail(replayed), *readme_lines[console_end:]]
        (REPO / "README.md").write_text("\n".join(new) + "\n")
        pytest.skip(f"README.md's session rewritten from the replay ({len(differences)} step(s) changed): review it")
    assert not differences, (
        f"the README's command-line session differs from what the commands print (rerun with {UPDATE_ENV}=1 "
        "to rewrite it from this replay, then review):\n\n" + "\n\n".join(differences)
    )
