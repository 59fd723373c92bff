"""The clinic's web app (SPEC section 9): server-rendered pages over the same
service functions as the command line."""

from scheduler.web.app import create_app

__all__ = ["create_app"]
