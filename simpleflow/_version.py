"""The installed version, read from the distribution's metadata.

The import name is ``simpleflow``; the distribution on PyPI is ``simpleflow-db``
(``simpleflow`` there is an unrelated project).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "simpleflow-db"

#: What ``__version__`` is when the package runs from a source tree that was never installed.
UNKNOWN_VERSION = "0+unknown"


def installed_version() -> str:
    """The version pip installed, or ``UNKNOWN_VERSION`` when the package is not installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return UNKNOWN_VERSION


__version__ = installed_version()
