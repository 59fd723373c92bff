"""``uvicorn --factory scheduler.web.asgi:app``: the app from ``cobalt.toml`` (or
``COBALT_CONFIG``), for running several uvicorn workers (docs/web.md)."""

from __future__ import annotations

from fastapi import FastAPI

from scheduler.config import load_settings
from scheduler.web.app import create_app


def app() -> FastAPI:
    return create_app(load_settings())
