"""The HTTP API and the web dashboard (the ``web`` extra: ``pip install 'simpleflow-db[web]'``).

``create_app(database, api_keys=..., read_keys=...)`` returns an ASGI application:
serve it with ``simpleflow serve`` or any ASGI server, or mount it in your own
FastAPI/Starlette application. The core package never imports this one.
"""

from __future__ import annotations

from simpleflow.web.app import create_app

__all__ = ["create_app"]
