"""``cobalt web`` and ``cobalt user`` (SPEC section 9): the clinic's web app and its users.

Only the standard library is imported here; each command loads what it needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from scheduler.errors import BadInput

if TYPE_CHECKING:
    from scheduler.cli import App


def cmd_web(app: App) -> None:
    import logging

    import uvicorn

    from scheduler.web import create_app

    a = app.args
    if not 0 < a.port < 65536:
        raise BadInput(f"--port {a.port} is not a port number")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    web_app = create_app(app.settings, app.engine)
    scheduler = None
    if a.with_scheduler:
        from apscheduler.schedulers.background import BackgroundScheduler

        from scheduler.runner import build_scheduler

        scheduler = build_scheduler(app.engine, app.settings, BackgroundScheduler)
        scheduler.start()
    try:
        # uvicorn's own access log prints paths, which carry MRNs: the app logs routes instead.
        uvicorn.run(web_app, host=a.host, port=a.port, access_log=False, log_level="info",
                    proxy_headers=True, server_header=False)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)


def _password(app: App) -> str:
    if app.args.password_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    else:
        import getpass

        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Password again: ")
        except EOFError:
            raise BadInput("no password given: type it at the prompt, or use --password-stdin") from None
        if password != again:
            raise BadInput("the two passwords differ")
    if not password:
        raise BadInput("the password must not be empty")
    return password


def cmd_user(app: App) -> None:
    from scheduler import db, users

    a = app.args
    if a.user_command == "add":
        password = _password(app)
        with db.transaction(app.engine) as session:
            user = users.add_user(session, app.actor, a.name, a.role, password)
            data = {"name": user.name, "role": user.role}
        app.out(data, f"user {data['name']} added ({data['role']})")
    elif a.user_command == "disable":
        with db.transaction(app.engine) as session:
            changed = users.disable_user(session, app.actor, a.name)
        app.out({"name": a.name, "active": False, "changed": changed},
                f"user {a.name} disabled" + ("" if changed else " (already)"))
    else:
        with db.transaction(app.engine) as session:
            rows = users.list_users(session)

        def text() -> str:
            if not rows:
                return "no users: add one with `cobalt user add NAME --role admin`"
            return "\n".join(f"{u['name']:<24} {u['role']:<10} {'active' if u['active'] else 'disabled'}"
                             + (f"  locked until {u['locked_until']}" if u["locked_until"] else "")
                             for u in rows)
        app.out(rows, text)


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("web", cmd_web, "serve the clinic's web app", json_flag=False)
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="the port (default 8000)")
    p.add_argument("--with-scheduler", action="store_true", help="also run the scheduler's pass in this process")
    p = add("user", cmd_user, "the web app's users", json_flag=False)
    sub = p.add_subparsers(dest="user_command", required=True, parser_class=type(p))
    add_p = sub.add_parser("add", help="add a user (the password from a prompt, or --password-stdin)")
    add_p.add_argument("name")
    add_p.add_argument("--role", required=True, choices=["nurse", "clinician", "admin"])
    add_p.add_argument("--password-stdin", action="store_true", help="read the password from one line on stdin")
    add_p.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("list", help="the users and their roles").add_argument("--json", action="store_true",
                                                                            help="print JSON")
    dis = sub.add_parser("disable", help="the user can no longer sign in")
    dis.add_argument("name")
