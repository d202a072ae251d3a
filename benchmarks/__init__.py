"""Benchmarks: simpleflow against the database floor and its peers (issue 8).

Entry point: ``nox -s bench`` (``-- --db sqlite|postgresql --quick``), or
``python -m benchmarks`` from an environment that has simpleflow installed.
Each measurement runs in its own subprocess with a time limit; see ``bench.py``.
"""
