"""The app factory and its routes: one route per page or action.

Each action route checks the signed-in user, the CSRF token and the role (403,
nothing changed), then calls the same service function as the command line in
one transaction, with the user's name as the audit actor. ``BadInput`` becomes
the form's one-line message (status 422) and the transaction rolls back.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine
from sqlmodel import Session, select

from models import Alert, User
from scheduler import db, labs, service
from scheduler.alerts import AlertPolicy
from scheduler.config import Settings
from scheduler.domain import Severity
from scheduler.errors import BadInput, NotFound
from scheduler.protocols import PROTOCOLS
from scheduler.safety import OPEN, acknowledge
from scheduler.store import get_patient, load_record
from scheduler.users import Action, may, sign_in
from scheduler.web import pages
from scheduler.web.sessions import COOKIE, IDLE_TIMEOUT, SessionCodec, WebSession, load_secret

log = logging.getLogger("cobalt.web")

TEMPLATES_DIR = Path(str(files("scheduler") / "templates" / "web"))
STATIC_DIR = Path(str(files("scheduler") / "web" / "static"))
DAYS_AHEAD = (0, 1, 2, 3, 7, 14, 28)

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # paths carry MRNs
    "Cross-Origin-Opener-Policy": "same-origin",
}


class Forbidden(Exception):
    """The request is refused with 403: no valid CSRF token, or a role that may not."""


class SignInNeeded(Exception):
    """No signed-in user: the page sends the browser to /login."""


@dataclass
class Web:
    """What every route needs: the settings, the engine, the session codec, the clock."""

    settings: Settings
    engine: Engine
    codec: SessionCodec
    templates: Jinja2Templates
    policy: AlertPolicy
    clock: Callable[[], datetime]

    def today(self) -> date:
        return self.clock().astimezone(self.settings.clinic.tz).date()

    def context(self, user: User) -> service.Context:
        clinic = self.settings.clinic
        early = service.EarlyWindows(clinic.early_days_loading, clinic.early_days_maintenance)
        return service.Context(clinic.calendar(), self.today(), user.name, self.policy, early)


# -- formatting (dates as people read them, in the clinic's zone) ---------------


def _day(value: date | str | None) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = date.fromisoformat(value[:10])
    return f"{value:%a} {value.day} {value:%b %Y}"


def _environment(settings: Settings) -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    tz = settings.clinic.tz

    def moment(value: datetime | str | None) -> str:
        if not value:
            return ""
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        local = value.astimezone(tz)
        return f"{_day(local.date())} {local:%H:%M}"

    env.filters["day"] = _day
    env.filters["moment"] = moment
    env.globals["clinic_name"] = settings.clinic.name
    return env


def _parse_date(text: str | None, label: str, default: date | None = None) -> date:
    text = (text or "").strip()
    if not text and default is not None:
        return default
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise BadInput(f"{label}: {text!r} is not a date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{label}: {text!r} is not a date (YYYY-MM-DD)") from None


def _number(text: str, label: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise BadInput(f"{label}: {text!r} is not a number") from None


def create_app(settings: Settings, engine: Engine | None = None, *,
               clock: Callable[[], datetime] | None = None) -> FastAPI:
    """The web app over ``engine`` (default: one made from ``settings``, its schema checked).

    ``clock`` gives the current time (aware); tests pass a fixed one.
    """
    if engine is None:
        engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    secret = load_secret(os.environ.get("COBALT_WEB_SECRET_KEY", ""), settings.base_dir)
    templates = Jinja2Templates(env=_environment(settings))
    web = Web(settings, engine, SessionCodec(secret), templates, AlertPolicy.from_mapping(settings.alerts),
              clock or (lambda: datetime.now(UTC)))
    app = FastAPI(title="Cobalt", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = web
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _middleware(app, web)
    _routes(app, web)
    return app


def _middleware(app: FastAPI, web: Web) -> None:
    @app.middleware("http")
    async def session_and_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.session = web.codec.loads(request.cookies.get(COOKIE))
        response = await call_next(request)
        session: WebSession | None = getattr(request.state, "session", None)
        if session is not None and not request.url.path.startswith("/static/"):
            # Re-issued on every request: the 12 hours run from the last one.
            response.set_cookie(
                COOKIE, web.codec.dumps(session), max_age=int(IDLE_TIMEOUT.total_seconds()), path="/",
                httponly=True, samesite="lax", secure=request.url.scheme == "https",
            )
        elif getattr(request.state, "clear_session", False):
            response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax",
                                   secure=request.url.scheme == "https")
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        # The access log names the route, never the path: paths and queries carry MRNs and names.
        route = request.scope.get("route")
        log.info("%s %s %d", request.method, getattr(route, "path", "(no route)"), response.status_code)
        return response

    @app.exception_handler(SignInNeeded)
    async def to_login(request: Request, exc: SignInNeeded) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return _page(web, request, "error.html", {"title": "Not allowed", "message": str(exc)}, 403)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return _page(web, request, "error.html", {"title": "Not found", "message": str(exc)}, 404)


def session_of(request: Request) -> WebSession:
    session: WebSession | None = request.state.session
    if session is None:
        session = request.state.session = WebSession()
    return session


def _page(web: Web, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    """One template, with the signed-in user, the CSRF token and what the user's role may do."""
    user = context.setdefault("user", getattr(request.state, "user", None))
    context["csrf"] = session_of(request).csrf
    context["may"] = lambda action: user is not None and may(user.role, Action(action))
    return web.templates.TemplateResponse(request, name, context, status_code=status)


def _routes(app: FastAPI, web: Web) -> None:

    @contextmanager
    def transaction() -> Iterator[Session]:
        with db.transaction(web.engine) as session:
            yield session

    def current_user(request: Request) -> User:
        session: WebSession | None = request.state.session
        if session is None or session.user_id is None:
            raise SignInNeeded()
        from scheduler.users import active_user

        with Session(web.engine) as s:
            user = active_user(s, session.user_id)
        if user is None:  # disabled since: the session ends
            request.state.session = None
            request.state.clear_session = True
            raise SignInNeeded()
        request.state.user = user
        return user

    async def change(request: Request, action: Action | None) -> tuple[User, dict[str, str]]:
        """The signed-in user and the form, once the CSRF token and the role are checked."""
        user = current_user(request)
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        if not session_of(request).csrf_ok(form.get("csrf_token")):
            raise Forbidden("This form has expired or did not come from Cobalt: nothing was changed. "
                            "Go back, reload the page and try again.")
        if action is not None and not may(user.role, action):
            raise Forbidden(f"A {user.role} may not do this: nothing was changed.")
        return user, form

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        return _page(web, request, name, context, status)

    # -- signing in ------------------------------------------------------------

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return f"ok {db.current_revision(web.engine) or 'no schema'}\n"

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> Response:
        return page(request, "login.html", {"user": None, "error": None, "username": ""})

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        if not session_of(request).csrf_ok(form.get("csrf_token")):
            raise Forbidden("This form has expired: reload the sign-in page and try again.")
        name, password = form.get("username", "").strip(), form.get("password", "")
        with transaction() as s:
            outcome = sign_in(s, name, password, web.clock())
            user_id = outcome.user.id if outcome.user else None
        if user_id is None:
            error = ("Too many wrong passwords: this name is locked for 15 minutes."
                     if outcome.locked else "Wrong username or password.")
            return page(request, "login.html", {"user": None, "error": error, "username": name}, 401)
        request.state.session = WebSession(user_id)  # a new session and token on every sign-in
        return RedirectResponse("/", status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await change(request, None)
        request.state.session = None
        request.state.clear_session = True
        return RedirectResponse("/login", status_code=303)

    # -- the worklist ------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def worklist(request: Request, on: str | None = None, days: str | None = None,
                 after: str | None = None) -> Response:
        user = current_user(request)
        error = None
        today = web.today()
        try:
            chosen = _parse_date(on, "Date", today)
            ahead = int(days) if days else 7
            if ahead not in DAYS_AHEAD:
                raise BadInput(f"Days ahead: choose one of {', '.join(map(str, DAYS_AHEAD))}")
        except (BadInput, ValueError) as exc:
            error, chosen, ahead = str(exc) if isinstance(exc, BadInput) else "Days ahead: not a number", today, 7
        try:
            if after:
                pages.parse_page_key(after)
        except ValueError:
            after = None  # a link from an older page: start again at the top
        with transaction() as s:
            data = pages.worklist(s, chosen, ahead, after if not error else None)
        return page(request, "worklist.html", {"user": user, "list": data, "days": ahead, "choices": DAYS_AHEAD,
                                                "today": today, "error": error}, 422 if error else 200)

    # -- patients ----------------------------------------------------------------

    @app.get("/patients", response_class=HTMLResponse)
    def patients(request: Request, q: str | None = None, status: str = "active") -> Response:
        user = current_user(request)
        if status not in service.PATIENT_STATUSES:
            status = "active"
        with transaction() as s:
            rows = service.list_patients(s, web.context(user), search=q or None, status=status)
        return page(request, "patients.html", {"user": user, "rows": rows, "q": q or "", "status": status})

    def enrol_page(request: Request, values: dict[str, str], error: str | None, status: int = 200) -> Response:
        return page(request, "patient_new.html", {
            "values": values, "error": error, "protocols": PROTOCOLS.values(), "today": web.today(),
        }, status)

    @app.get("/patients/new", response_class=HTMLResponse)
    def enrol_form(request: Request) -> Response:
        current_user(request)
        return enrol_page(request, {}, None)

    @app.post("/patients/new", response_class=HTMLResponse)
    async def enrol(request: Request) -> Response:
        user, form = await change(request, Action.ENROL)
        try:
            with transaction() as s:
                patient = service.enroll(
                    s, web.context(user), mrn=form.get("mrn", ""), name=form.get("name", ""),
                    email=form.get("email", "").strip() or None, phone=form.get("phone", "").strip() or None,
                    protocol=form.get("protocol", "").strip() or None,
                    start=_parse_date(form.get("start"), "Start", web.today()),
                    neuro=form.get("neuro") == "on", renal_impairment=form.get("renal_impairment") == "on",
                    on_folic_acid=form.get("on_folic_acid") == "on",
                    egfr=_number(form.get("egfr", ""), "eGFR"),
                    platelets=_number(form.get("platelets", ""), "Platelets"),
                    hb=_number(form.get("hb", ""), "Haemoglobin"),
                    maintenance_months=_months(form.get("maintenance_months", "")),
                )
                mrn = patient.mrn
        except BadInput as exc:
            return enrol_page(request, form, str(exc), 422)
        return RedirectResponse(_patient_url(mrn), status_code=303)

    def patient_page(request: Request, user: User, mrn: str, error: tuple[str, str] | None = None,
                     status: int = 200, values: dict[str, str] | None = None) -> Response:
        with transaction() as s:
            record = load_record(s, get_patient(s, mrn))
            data = pages.patient_page(s, record)
        return page(request, "patient.html", {
            **data, "user": user, "error": error, "today": web.today(), "values": values or {},
            "lab_codes": labs.CATALOG.values(), "protocols": PROTOCOLS.values(),
        }, status)

    @app.get("/patients/{mrn}", response_class=HTMLResponse)
    def patient(request: Request, mrn: str) -> Response:
        return patient_page(request, current_user(request), mrn)

    async def act(request: Request, mrn: str, action: Action, form_name: str,
                  do: Callable[[Session, service.Context, dict[str, str]], object]) -> Response:
        user, form = await change(request, action)
        try:
            with transaction() as s:
                do(s, web.context(user), form)
        except NotFound:
            raise
        except BadInput as exc:
            return patient_page(request, user, mrn, (form_name, str(exc)), 422, form)
        return RedirectResponse(_patient_url(mrn), status_code=303)

    @app.post("/patients/{mrn}/dose", response_class=HTMLResponse)
    async def record_dose(request: Request, mrn: str) -> Response:
        return await act(request, mrn, Action.GIVE, "dose", lambda s, ctx, f: service.give(
            s, ctx, mrn, _parse_date(f.get("given_on"), "Date", ctx.today), early=f.get("early") == "on"))

    @app.post("/patients/{mrn}/results", response_class=HTMLResponse)
    async def record_results(request: Request, mrn: str) -> Response:
        def do(s: Session, ctx: service.Context, f: dict[str, str]) -> object:
            results = [f"{code}={f[f'result_{code}'].strip()}" for code in labs.CATALOG
                       if f.get(f"result_{code}", "").strip()]
            results += [t for t in re.split(r"[\s,;]+", f.get("results", "")) if t]
            return service.record_lab(s, ctx, mrn, results, on=_parse_date(f.get("taken_on"), "Taken on", ctx.today),
                                      order=f.get("order", "").strip() or None)
        return await act(request, mrn, Action.LAB, "results", do)

    @app.post("/patients/{mrn}/move", response_class=HTMLResponse)
    async def move(request: Request, mrn: str) -> Response:
        def do(s: Session, ctx: service.Context, f: dict[str, str]) -> object:
            try:
                event_id = int(f.get("event", ""))
            except ValueError:
                raise BadInput("Event: choose the event to move") from None
            return service.move_event(s, ctx, mrn, event_id, _parse_date(f.get("to"), "Move to"),
                              f.get("reason", "").strip() or None)
        return await act(request, mrn, Action.MOVE, "move", do)

    @app.post("/patients/{mrn}/acknowledge", response_class=HTMLResponse)
    async def ack(request: Request, mrn: str) -> Response:
        user, form = await change(request, Action.ACK)
        code = form.get("code", "").strip().lower()
        with transaction() as s:
            patient = get_patient(s, mrn)
            row = s.exec(select(Alert).where(Alert.patient_id == patient.id, Alert.status == OPEN,
                                             Alert.code == code)).first()
        if row is not None and row.severity == Severity.URGENT.value and not may(user.role, Action.ACK_URGENT):
            raise Forbidden("Only a clinician may acknowledge an urgent alert: nothing was changed.")
        try:
            with transaction() as s:
                acknowledge(s, web.context(user), mrn, code)
        except NotFound:
            raise
        except BadInput as exc:
            return patient_page(request, user, mrn, ("alerts", str(exc)), 422)
        return RedirectResponse(_patient_url(mrn), status_code=303)

    def decision(path: str, action: Action, fn: Callable[..., object], date_field: str, label: str) -> None:
        async def route(request: Request, mrn: str) -> Response:
            return await act(request, mrn, action, action.value, lambda s, ctx, f: fn(
                s, ctx, mrn, _parse_date(f.get(date_field), label, ctx.today)))
        app.post(f"/patients/{{mrn}}/{path}", response_class=HTMLResponse, name=path)(route)

    decision("end-loading", Action.END_LOADING, service.end_loading, "on", "Loading ended on")
    decision("confirm-response", Action.CONFIRM_RESPONSE, service.confirm_response, "on", "Response confirmed on")
    decision("review", Action.REVIEW, service.review, "on", "Reviewed on")

    @app.post("/patients/{mrn}/discharge", response_class=HTMLResponse)
    async def discharge(request: Request, mrn: str) -> Response:
        return await act(request, mrn, Action.DISCHARGE, "discharge", lambda s, ctx, f: service.discharge(
            s, ctx, mrn, f.get("reason", ""), _parse_date(f.get("on"), "Discharged on", ctx.today)))

    @app.post("/patients/{mrn}/switch", response_class=HTMLResponse)
    async def switch(request: Request, mrn: str) -> Response:
        return await act(request, mrn, Action.SWITCH, "switch", lambda s, ctx, f: service.switch(
            s, ctx, mrn, f.get("protocol", ""), _parse_date(f.get("on"), "Switch on", ctx.today),
            _months(f.get("maintenance_months", ""))))

    @app.post("/patients/{mrn}/void", response_class=HTMLResponse)
    async def void(request: Request, mrn: str) -> Response:
        def do(s: Session, ctx: service.Context, f: dict[str, str]) -> object:
            try:
                event_id = int(f.get("event", ""))
            except ValueError:
                raise BadInput("Record: choose the record to void") from None
            return service.void_record(s, ctx, mrn, event_id, f.get("reason", ""))
        return await act(request, mrn, Action.VOID, "void", do)

    def edit_page(request: Request, user: User, mrn: str, values: dict[str, Any] | None,
                  error: str | None, status: int = 200) -> Response:
        with transaction() as s:
            patient = get_patient(s, mrn)
        if values is None:
            values = {k: getattr(patient, k) or "" for k in service.EDITABLE}
        return page(request, "patient_edit.html", {"user": user, "patient": patient, "values": values,
                                                    "error": error}, status)

    @app.get("/patients/{mrn}/edit", response_class=HTMLResponse)
    def edit_form(request: Request, mrn: str) -> Response:
        return edit_page(request, current_user(request), mrn, None, None)

    @app.post("/patients/{mrn}/edit", response_class=HTMLResponse)
    async def edit(request: Request, mrn: str) -> Response:
        user, form = await change(request, Action.EDIT)
        flags = {k: form.get(k) == "on" for k in ("neuro", "renal_impairment", "on_folic_acid")}
        try:
            with transaction() as s:
                service.edit_patient(s, web.context(user), mrn, name=form.get("name", ""),
                                     email=form.get("email", ""), phone=form.get("phone", ""), **flags)
        except NotFound:
            raise
        except BadInput as exc:
            return edit_page(request, user, mrn, {**form, **flags}, str(exc), 422)
        return RedirectResponse(_patient_url(mrn), status_code=303)

    # -- the clinic's back office (admin) ------------------------------------------

    @app.get("/outbox", response_class=HTMLResponse)
    def outbox(request: Request) -> Response:
        user = current_user(request)
        if not may(user.role, Action.ADMIN_PAGES):
            raise Forbidden("The outbox is for the clinic's administrator.")
        from scheduler.outbox import outbox_json

        with transaction() as s:
            rows = outbox_json(s, limit=500)
        return page(request, "outbox.html", {"user": user, "rows": rows})

    @app.get("/audit", response_class=HTMLResponse)
    def audit(request: Request) -> Response:
        user = current_user(request)
        if not may(user.role, Action.ADMIN_PAGES):
            raise Forbidden("The audit trail is for the clinic's administrator.")
        with transaction() as s:
            rows = pages.audit_trail(s, web.settings.clinic.tz)
        return page(request, "audit.html", {"user": user, "rows": rows})


def _months(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise BadInput(f"{text!r} is not a whole number of months") from None


def _patient_url(mrn: str) -> str:
    return "/patients/" + quote(mrn, safe="")
