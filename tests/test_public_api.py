"""The public names (API.md) are exactly what ``simpleflow`` exports."""

from __future__ import annotations

import importlib

import pytest

import simpleflow

PUBLIC = {
    "Client",
    "AsyncClient",
    "Limit",
    "Poller",
    "Workflow",
    "WorkflowRun",
    "WorkflowContext",
    "RetryPolicy",
    "RunInfo",
    "RunEvent",
    "Schedule",
    "StepInfo",
    "ScheduleTicker",
    "MetricsCollector",
    "PrometheusMetrics",
    "migrate",
    "__version__",
}
ERRORS = {
    "SimpleflowError",
    "ConfigurationError",
    "ValidationError",
    "NotFound",
    "AlreadyComplete",
    "InvalidState",
    "WaitTimeout",
    "DatabaseError",
    "MigrationError",
    "WorkflowError",
    "StepFailed",
    "SignalTimeout",
    "ChildFailed",
    "NonDeterminismError",
    "WorkflowCancelled",
    "NonRetryable",
    "AttemptTimeout",
    "DeadlineExceeded",
}


def test_all_is_sorted_and_complete() -> None:
    assert list(simpleflow.__all__) == sorted(simpleflow.__all__)
    assert len(simpleflow.__all__) == len(set(simpleflow.__all__))
    assert set(simpleflow.__all__) == PUBLIC | ERRORS


def test_every_public_name_resolves() -> None:
    for name in simpleflow.__all__:
        assert getattr(simpleflow, name) is not None, name


def test_star_import() -> None:
    namespace: dict[str, object] = {}
    exec("from simpleflow import *", namespace)
    assert set(namespace) >= PUBLIC | ERRORS


def test_error_tree() -> None:
    base = simpleflow.SimpleflowError
    for name in ERRORS:
        assert issubclass(getattr(simpleflow, name), base), name
    for name in ("StepFailed", "SignalTimeout", "ChildFailed", "NonDeterminismError", "WorkflowCancelled"):
        assert issubclass(getattr(simpleflow, name), simpleflow.WorkflowError), name
    assert issubclass(simpleflow.WaitTimeout, TimeoutError)
    assert issubclass(simpleflow.AttemptTimeout, TimeoutError)
    assert issubclass(simpleflow.DeadlineExceeded, TimeoutError)
    assert issubclass(simpleflow.SignalTimeout, TimeoutError)
    assert issubclass(simpleflow.SignalTimeout, simpleflow.WaitTimeout)  # one timeout for every wait
    assert issubclass(simpleflow.ValidationError, ValueError)
    assert issubclass(simpleflow.NotFound, LookupError)


def test_version_matches_package_metadata() -> None:
    """``__version__`` is the installed simpleflow-db distribution's, or says it is unknown.

    The installed-wheel test (tests/test_wheel.py) checks the real value from a fresh venv.
    """
    from importlib.metadata import PackageNotFoundError, version

    from simpleflow._version import DISTRIBUTION, UNKNOWN_VERSION

    assert DISTRIBUTION == "simpleflow-db"
    try:
        expected = version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        expected = UNKNOWN_VERSION
    assert simpleflow.__version__ == expected


def test_pyproject_names_the_distribution_and_this_release() -> None:
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
        import tomli as tomllib

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    assert project["name"] == "simpleflow-db"
    changelog = (Path(__file__).resolve().parent.parent / "CHANGELOG.md").read_text()
    assert f"## {project['version']} " in changelog, "CHANGELOG.md has no entry for the version in pyproject.toml"


def test_migrate_is_callable_and_module_still_importable() -> None:
    assert callable(simpleflow.migrate)
    module = importlib.import_module("simpleflow.db.migrate")
    assert module.migrate is simpleflow.migrate


def test_cli_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from simpleflow.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"simpleflow {simpleflow.__version__}\n"
