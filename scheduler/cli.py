"""The ``cobalt`` command line (SPEC section 3).

The clock is read here, once per command, and passed down. Errors become one
line on stderr: exit status 2 for bad input (nothing was changed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import functools
import gc
import gettext
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from scheduler import __version__
from scheduler.errors import BadInput, CobaltError, describe_error

# Only the standard library is imported before a command runs: `cobalt --help`
# stays fast, and each command loads the libraries it needs (SPEC section 6).
if TYPE_CHECKING:
    from sqlalchemy import Engine

    from scheduler import service
    from scheduler.config import Settings


# Modules that add commands of their own: each has ``register(add)``, where ``add``
# is build_parser's helper below, and imports only the standard library at its top.
FEATURES: tuple[str, ...] = (
    "scheduler.cli_corrections", "scheduler.cli_truthful", "scheduler.cli_io", "scheduler.cli_web",
)


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, measuring the terminal without importing shutil (and,
    through it, the compression libraries) on every start."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            try:
                width = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
            except (ValueError, OSError, AttributeError):
                width = 80
            width -= 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise BadInput(message)


# A pass before EARLIEST_NOW is a slip of the keyboard (dates: scheduler.validation.check_date).
EARLIEST_NOW = datetime(2000, 1, 1)


def _date(text: str) -> date:
    from scheduler.validation import check_date  # one rule for the command line and import

    try:
        return check_date(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _datetime(text: str) -> datetime:
    try:
        if not text.isascii():
            raise ValueError(text)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date-time") from None
    if value.replace(tzinfo=None) < EARLIEST_NOW:
        raise argparse.ArgumentTypeError(f"{text!r} is before {EARLIEST_NOW.year}: check the year")
    from scheduler.validation import LATEST_YEAR

    if value.year > LATEST_YEAR:
        raise argparse.ArgumentTypeError(f"{text!r} is too far in the future")
    return value


_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", flags=re.ASCII)
_WHOLE = re.compile(r"[+-]?\d+", flags=re.ASCII)


def _number(text: str) -> float:
    """A decimal number in ASCII digits: not ``nan``, ``inf`` nor ``٣٠``."""
    if not _DECIMAL.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    return float(text)


def _whole(text: str) -> int:
    if not _WHOLE.fullmatch(text.strip()) or len(text.strip()) > 12:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def _months(text: str) -> int:
    try:
        return _whole(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of months") from None


class App:
    """What a command needs: settings, the database, the clock read once, the actor."""

    def __init__(self, args: argparse.Namespace, settings: Settings, now: datetime) -> None:
        self.args = args
        self.settings = settings
        self.now = now
        from scheduler.alerts import AlertPolicy

        self.today = now.astimezone(settings.clinic.tz).date()
        by = getattr(args, "by", None)
        if by is not None and (not by.isprintable() or len(by) > 64):
            raise BadInput("--by must be a name of at most 64 characters, with no control characters")
        self.actor = (by or _os_user())[:64]
        self.policy = AlertPolicy.from_mapping(settings.alerts)  # a bad threshold: exit 2 at start
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from scheduler import db

            self._engine = db.make_engine(self.settings.database_url)
            db.ensure_schema(self._engine)
            _start_up_done()
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def context(self) -> service.Context:
        from scheduler import service

        clinic = self.settings.clinic
        early = service.EarlyWindows(clinic.early_days_loading, clinic.early_days_maintenance)
        return service.Context(clinic.calendar(), self.today, self.actor, self.policy, early)

    def out(self, data: Any, text: str | Callable[[], str]) -> None:
        if getattr(self.args, "json", False):
            import json

            print(json.dumps(data, indent=2, default=str))
        else:
            print(text() if callable(text) else text)


def _os_user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:
        return "unknown"


# -- commands ----------------------------------------------------------------------


def cmd_db(app: App) -> None:
    from alembic.util.exc import CommandError as AlembicCommandError

    from scheduler import db

    engine = db.make_engine(app.settings.database_url)
    _start_up_done()
    try:
        if app.args.db_command == "upgrade":
            db.upgrade(engine, "head")
            print(f"database at {db.current_revision(engine)} (newest)")
        elif app.args.db_command == "downgrade":
            db.downgrade(engine, app.args.revision)
            print(f"database at {db.current_revision(engine) or 'base'}")
        else:
            current = db.current_revision(engine)
            head = db.head_revision()
            print(f"database at {current or 'base'}; newest is {head}")
    except AlembicCommandError as exc:  # e.g. an unknown revision
        raise BadInput(str(exc).splitlines()[0]) from None
    finally:
        engine.dispose()


def cmd_protocols(app: App) -> None:
    from scheduler import service
    from scheduler.protocols import PROTOCOLS

    data = service.protocols_json()

    def text() -> str:
        lines = []
        for p in PROTOCOLS.values():
            lines.append(f"{p.id}: {p.drug} {p.dose} {p.route}")
            lines.append(f"  {p.summary}")
            for phase in p.loading:
                if phase.open_ended:
                    lines.append(f"  {phase.label}: every {phase.every} days, open-ended")
                else:
                    gate = " (held until the response is confirmed)" if phase.gated else ""
                    lines.append(f"  {phase.label}: {phase.doses} doses, intervals "
                                 f"{', '.join(map(str, phase.intervals))} days{gate}")
            months = " or ".join(map(str, sorted(p.maintenance_months)))
            lines.append(f"  maintenance: every {months} month(s), for life")
        return "\n".join(lines)

    app.out(data, text)


def cmd_enroll(app: App) -> None:
    from scheduler import db, service
    from scheduler.store import load_record

    a = app.args
    with db.transaction(app.engine) as session:
        patient = service.enroll(
            session, app.context(), mrn=a.mrn, name=a.name, email=a.email, protocol=a.protocol,
            start=a.start, neuro=a.neuro, renal_impairment=a.renal_impairment, egfr=a.egfr,
            platelets=a.platelets, hb=a.hb, maintenance_months=a.maintenance_months,
            on_folic_acid=a.on_folic_acid, phone=a.phone,
        )
        record = load_record(session, patient)
        data = _schedule_json(record)
    app.out(data, f"enrolled {patient.mrn} on {data['patient']['protocol']} from "
                  f"{data['patient']['start']}")


def _schedule_json(record: Any) -> dict[str, Any]:
    from scheduler.safety import alerts_json
    from scheduler.service import lab_missing, voided_json
    from scheduler.store import event_json, sorted_events

    def event(e: Any) -> dict[str, Any]:
        item = event_json(e)
        if e.kind == "lab" and e.status == "done":
            item["missing"] = lab_missing(record, e)  # the order's tests still without a result
        return item

    p = record.patient
    regimens = sorted(record.regimens, key=lambda r: r.number)
    current = regimens[-1]
    return {
        "patient": {
            "mrn": p.mrn, "name": p.name, "email": p.email, "phone": p.phone, "protocol": current.protocol,
            "start": regimens[0].start.isoformat(), "protocol_start": current.start.isoformat(),
            "maintenance_months": current.maintenance_months, "neuro": p.neuro,
            "renal_impairment": p.renal_impairment, "on_folic_acid": p.on_folic_acid,
            "pernicious": p.pernicious, "opted_out": p.opted_out, "loading_reminders": p.loading_reminders,
            "status": p.status,
            "discharged_on": p.discharged_on.isoformat() if p.discharged_on else None,
            "discharge_reason": p.discharge_reason,
            "regimens": [{"protocol": r.protocol, "start": r.start.isoformat(),
                          "maintenance_months": r.maintenance_months} for r in regimens],
        },
        "events": [event(e) for e in sorted_events(record.events)],
        "alerts": alerts_json(record),
        "voided": voided_json(record),
    }


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    fmt = lambda row: "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)).rstrip()  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def cmd_schedule(app: App) -> None:
    from scheduler import db
    from scheduler.store import get_patient, load_record

    with db.transaction(app.engine) as session:
        record = load_record(session, get_patient(session, app.args.mrn))
        data = _schedule_json(record)

    def text() -> str:
        p = data["patient"]
        head = f"{p['mrn']}  {p['name']}  {p['protocol']}  from {p['protocol_start']}  ({p['status']})"
        if p["status"] == "discharged":
            head += f"\ndischarged on {p['discharged_on']}: {p['discharge_reason'] or 'no reason given'}"
        rows = []
        for e in data["events"]:
            overdue = e["status"] == "planned" and e["due"] < app.today.isoformat()
            status = "OVERDUE" if overdue else e["status"]
            because = e["because"] + (f" [missing: {', '.join(e['missing'])}]" if e.get("missing") else "")
            rows.append([str(e["id"]), e["due"], e["kind"], e["label"], str(e["seq"]), status,
                         e["done_on"] or "", because])
        lines = [head, _table(rows, ["id", "due", "kind", "label", "seq", "status", "done", "because"])]
        for v in data["voided"]:
            lines.append(f"VOID {v['what']}: voided {v['when'][:10]} by {v['by']}: {v['why']}")
        for alert in data["alerts"]:
            lines.append(f"ALERT {alert['severity']}: {alert['code']} since {alert['since']}: "
                         f"{alert['message']}")
        return "\n".join(lines)

    app.out(data, text)


def cmd_due(app: App) -> None:
    """The worklist, written as the rows arrive (a million patients' list is never held):
    ``--json`` one item at a time; the text table in two reads of the list, the first
    for the column widths and each patient's overdue groups, the second to print."""
    from scheduler import db, service

    on = app.args.on or app.today
    days = app.args.days or 0
    if days < 0:
        raise BadInput("--days must not be negative")
    try:
        until = on + timedelta(days=days)
    except OverflowError:
        raise BadInput(f"--days {days} reaches beyond the calendar") from None
    with db.transaction(app.engine) as session:
        if getattr(app.args, "json", False):
            _due_json(service.worklist_items(session, on=on, until=until))
        else:
            _due_text(lambda: service.worklist_items(session, on=on, until=until), until)


def _due_json(items: Iterable[dict[str, Any]]) -> None:
    """What ``print(json.dumps(items, indent=2, default=str))`` prints, an item at a time."""
    import json

    out = sys.stdout
    first = True
    for item in items:
        text = json.dumps(item, indent=2, default=str).replace("\n", "\n  ")
        out.write(("[\n  " if first else ",\n  ") + text)
        first = False
    out.write("[]\n" if first else "\n]\n")


def _due_text(read: Callable[[], Iterable[dict[str, Any]]], until: date) -> None:
    """The ``due`` table: a patient's overdue events of one kind and phase are one line
    (as ``scheduler.worklist.group_overdue`` makes them), then each patient's open
    alerts once. Two reads of the list: the first keeps, per overdue group, its size
    and what its line's width needs (a few hundred bytes, not the rows); the second
    prints."""
    from scheduler.worklist import overdue_summary, what

    headers = ["due", "", "mrn", "name", "what", "because"]
    widths = [len(h) for h in headers]
    # (mrn, kind, phase) -> [count, width of the first's what, of its because, lab labels, due, drug, amount];
    # None once its line is printed
    groups: dict[tuple[str, str, str], list[Any] | None] = {}
    any_item = False

    def widen(row: Sequence[str]) -> None:
        for n, value in enumerate(row):
            widths[n] = max(widths[n], len(value))

    for item in read():  # first read: the widths, and the overdue groups
        any_item = True
        if item["overdue"]:
            key = (item["mrn"], sys.intern(item["kind"]), sys.intern(item["phase"]))
            group = groups.get(key)
            if group is None:
                widen([item["due"], "OVERDUE", item["mrn"], item["name"]])
                groups[key] = [1, len(what(item)), len(item["because"]),
                               [str(item["label"])] if item["kind"] == "lab" else None,
                               item["due"], item["drug"], item["amount"]]
            else:
                group[0] += 1
                if group[3] is not None and str(item["label"]) not in group[3]:
                    group[3].append(str(item["label"]))
        else:
            widen([item["due"], "due", item["mrn"], item["name"], what(item), item["because"]])
    if not any_item:
        print(f"nothing due on or before {until.isoformat()}")
        return
    for (_, kind, phase), group in groups.items():
        assert group is not None
        count, what_width, because_width, labels, due, drug, amount = group
        if count > 1:
            first = {"kind": kind, "phase": phase, "due": due, "drug": drug, "amount": amount}
            what_width, because_width = len(overdue_summary(first, count, labels or [])), 0
        widths[4], widths[5] = max(widths[4], what_width), max(widths[5], because_width)
    fmt = lambda row: "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)).rstrip()  # noqa: E731
    out = sys.stdout
    out.write(fmt(headers) + "\n" + fmt(["-" * w for w in widths]))
    alerted: dict[str, str] = {}
    for item in read():  # second read: the lines, in the order of their first item
        if item["alerts"] and item["mrn"] not in alerted:  # each patient's alerts once
            codes = ", ".join(f"{a['code']} ({a['severity']})" for a in item["alerts"])
            alerted[item["mrn"]] = f"  {item['mrn']} {item['name']}: {codes}"
        if item["overdue"]:
            key = (item["mrn"], item["kind"], item["phase"])
            found = groups.get(key, [1, 0, 0, None])  # not there: changed since the first read
            if found is None:
                continue  # its line is printed
            groups[key] = None
            count, labels = found[0], found[3]
            text, because = ((what(item), item["because"]) if count == 1
                             else (overdue_summary(item, count, labels or []), ""))
            row = [item["due"], "OVERDUE", item["mrn"], item["name"], text, because]
        else:
            row = [item["due"], "due", item["mrn"], item["name"], what(item), item["because"]]
        out.write("\n" + fmt(row))
    if alerted:
        out.write("\n\nOpen alerts\n" + "\n".join(alerted.values()))
    out.write("\n")
def cmd_give(app: App) -> None:
    from scheduler import db, service
    from scheduler.store import event_json

    with db.transaction(app.engine) as session:
        event = service.give(session, app.context(), app.args.mrn, app.args.on, early=app.args.early)
        data = {"mrn": app.args.mrn, "given_on": (app.args.on or app.today).isoformat(),
                "event": event_json(event)}
    app.out(data, f"{app.args.mrn}: {event.kind} {event.label} {event.seq} given on {data['given_on']}")


def cmd_lab(app: App) -> None:
    from scheduler import db, labs, service
    from scheduler.store import event_json, get_patient, load_record

    with db.transaction(app.engine) as session:
        order = service.record_lab(session, app.context(), app.args.mrn, app.args.result or [],
                                   on=app.args.on, order=app.args.order)
        codes = [labs.parse_result(text)[0] for text in app.args.result or []]
        asked = set(labs.asked_codes(order.tests.split())) if order else set()
        unmatched = [code for code in codes if code not in asked]
        item = None
        if order is not None:
            item = event_json(order)
            item["missing"] = service.lab_missing(load_record(session, get_patient(session, app.args.mrn)), order)
        data = {"mrn": app.args.mrn, "on": (app.args.on or app.today).isoformat(), "order": item,
                "completes_nothing": unmatched}

    def text() -> str:
        said = f"{app.args.mrn}: results recorded"
        if item is not None:
            said += f"; lab order {item['label']} (due {item['due']}) completed"
            if item["missing"]:
                said += f", still missing: {', '.join(item['missing'])}"
        if unmatched:
            said += (f"; {', '.join(unmatched)} {'complete' if len(unmatched) > 1 else 'completes'} nothing: "
                     "no open lab order asks for it")
        return said

    app.out(data, text)


def _decision(name: str, done: str) -> Callable[[App], None]:
    def command(app: App) -> None:
        from scheduler import db, service

        fn = getattr(service, name)
        with db.transaction(app.engine) as session:
            fn(session, app.context(), app.args.mrn, app.args.on)
        on = (app.args.on or app.today).isoformat()
        app.out({"mrn": app.args.mrn, "command": app.args.command, "on": on},
                f"{app.args.mrn}: {done} on {on}")
    return command


def cmd_discharge(app: App) -> None:
    from scheduler import db, service

    with db.transaction(app.engine) as session:
        service.discharge(session, app.context(), app.args.mrn, app.args.reason, app.args.on)
    on = (app.args.on or app.today).isoformat()
    app.out({"mrn": app.args.mrn, "command": "discharge", "on": on}, f"{app.args.mrn}: discharged on {on}")


def _opt(opted_out: bool) -> Callable[[App], None]:
    def command(app: App) -> None:
        from scheduler import db, service

        with db.transaction(app.engine) as session:
            changed = service.set_opt_out(session, app.context(), app.args.mrn, opted_out)
        state = "opted out of messages" if opted_out else "receives messages"
        app.out({"mrn": app.args.mrn, "opted_out": opted_out, "changed": changed},
                f"{app.args.mrn}: {state}" + ("" if changed else " (unchanged)"))
    return command


def cmd_switch(app: App) -> None:
    from scheduler import db, service

    with db.transaction(app.engine) as session:
        regimen = service.switch(session, app.context(), app.args.mrn, app.args.protocol,
                                 app.args.on, app.args.maintenance_months)
    app.out({"mrn": app.args.mrn, "protocol": regimen.protocol, "start": regimen.start.isoformat()},
            f"{app.args.mrn}: switched to {regimen.protocol} from {regimen.start.isoformat()}")


def cmd_tick(app: App) -> None:
    from scheduler.passes import run_pass

    now = app.args.now or app.now
    if now.tzinfo is None:
        now = now.replace(tzinfo=app.settings.clinic.tz)
    report = run_pass(app.engine, app.settings, now.astimezone(UTC))
    app.out(report.__dict__, f"pass at {now.isoformat()}: {report}")


def cmd_run(app: App) -> None:
    from scheduler.runner import run_forever

    run_forever(app.engine, app.settings)


def cmd_outbox(app: App) -> None:
    from scheduler import db
    from scheduler.outbox import outbox_json, outbox_text

    with db.transaction(app.engine) as session:
        data = outbox_json(session)
    app.out(data, lambda: outbox_text(data))


def cmd_alerts(app: App) -> None:
    from scheduler import db
    from scheduler.safety import alerts_text, list_open_alerts

    with db.transaction(app.engine) as session:
        data = list_open_alerts(session)
    app.out(data, lambda: alerts_text(data))


def cmd_ack(app: App) -> None:
    from scheduler import db
    from scheduler.safety import acknowledge

    with db.transaction(app.engine) as session:
        acknowledge(session, app.context(), app.args.mrn, app.args.code)
    app.out({"mrn": app.args.mrn, "code": app.args.code, "status": "acknowledged"},
            f"{app.args.mrn}: alert {app.args.code} acknowledged")


# -- the parser --------------------------------------------------------------------


# argparse translates every label of every parser through gettext, which searches
# the locale folders on each call (about a third of `cobalt --help`'s time): the
# answer cannot change within one process, so ask once per text.
argparse._ = functools.cache(gettext.gettext)  # type: ignore[attr-defined]


class _Unused:
    """Stands in for the parser of a command that is not being run: the arguments
    given to it are dropped, so `cobalt --help` and a command start without building
    every other command's options (SPEC section 6: a nurse runs many short commands)."""

    def __getattr__(self, name: str) -> Callable[..., _Unused]:
        return lambda *args, **kwargs: self


def command_of(argv: Sequence[str]) -> str:
    """The command named in ``argv`` (after the global options), or "" for none."""
    args = iter(argv)
    for arg in args:
        if arg == "--by":
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return ""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only``, every command is listed but only that
    one gets its options (the others are never parsed in this process)."""
    parser = _Parser(prog="cobalt", description="Lifelong B12 treatment schedules and reminders.")
    parser.add_argument("--version", action="version", version=f"cobalt {__version__}")
    parser.add_argument("--by", help="who is acting, for the audit trail (default: the OS user)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, fn: Callable[[App], None], help: str, json_flag: bool = True,
            mrn: bool = False, on: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        if only is not None and name != only:
            return _Unused()  # type: ignore[return-value]
        p.add_argument("--by", default=argparse.SUPPRESS, help="who is acting (audit trail)")
        if mrn:
            p.add_argument("mrn", help="the patient's medical record number")
        if on:
            p.add_argument("--on", type=_date, help="the date (YYYY-MM-DD; default today)")
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON")
        return p

    p = add("db", cmd_db, "database migrations", json_flag=False)
    dbsub = p.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    dbsub.add_parser("upgrade", help="apply every migration (Alembic)")
    down = dbsub.add_parser("downgrade", help="step back to a revision ('base' for empty)")
    down.add_argument("revision")
    dbsub.add_parser("current", help="the database's revision and the newest")

    add("protocols", cmd_protocols, "the protocols and their phases", json_flag=True)

    p = add("enroll", cmd_enroll, "enrol a patient", json_flag=True)
    p.add_argument("--mrn", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--email")
    p.add_argument("--phone", help="a telephone number, for the clinic's \"to telephone\" list")
    p.add_argument("--protocol", help="hydroxo-neuro (default with --neuro), hydroxo (default), cyano")
    p.add_argument("--start", type=_date, help="the planned start (default today)")
    p.add_argument("--neuro", action="store_true", help="neurological symptoms")
    p.add_argument("--renal-impairment", action="store_true")
    p.add_argument("--egfr", type=_number, help="eGFR, mL/min/1.73m2")
    p.add_argument("--platelets", type=_number, help="platelets, 10^9/L")
    p.add_argument("--hb", type=_number, help="haemoglobin, g/dL")
    p.add_argument("--maintenance-months", type=_months, help="2 or 3 (hydroxo)")
    p.add_argument("--on-folic-acid", action="store_true")

    add("schedule", cmd_schedule, "a patient's whole timeline", json_flag=True, mrn=True)
    p = add("due", cmd_due, "the worklist: planned events due (and overdue)", json_flag=True, on=True)
    p.add_argument("--days", type=_whole, default=0, help="also what is due within N days after")
    p = add("give", cmd_give, "record the next planned dose as given", json_flag=True, mrn=True, on=True)
    p.add_argument("--early", action="store_true",
                   help="the dose is meant to be given this early (beyond the clinic's early window)")
    p = add("lab", cmd_lab, "record lab results", json_flag=True, mrn=True, on=True)
    p.add_argument("--order", help="the lab order label to complete (e.g. 3-month)")
    p.add_argument("--result", action="extend", nargs="+", metavar="CODE=VALUE",
                   help="one or more results (the flag may be repeated)")
    add("end-loading", _decision("end_loading", "loading ended"),
        "hydroxo-neuro: no further improvement; maintenance follows", mrn=True, on=True)
    add("confirm-response", _decision("confirm_response", "response confirmed"),
        "cyano: improvement and reticulocyte response confirmed; phase 2 follows", mrn=True, on=True)
    add("review", _decision("review", "review recorded (improvement continuing)"),
        "hydroxo-neuro: the review found improvement continuing; loading goes on", mrn=True, on=True)
    p = add("discharge", cmd_discharge, "treatment ends: cancel what is not done", mrn=True, on=True)
    p.add_argument("--reason", required=True)
    add("opt-out", _opt(True), "the patient receives no messages", mrn=True)
    add("opt-in", _opt(False), "the patient receives messages again", mrn=True)
    p = add("switch", cmd_switch, "move a patient to another protocol", mrn=True, on=True)
    p.add_argument("--protocol", required=True)
    p.add_argument("--maintenance-months", type=_months)
    p = add("tick", cmd_tick, "one scheduler pass", json_flag=True)
    p.add_argument("--now", type=_datetime, help="the pass's time (ISO; default now)")
    add("run", cmd_run, "the background scheduler, until stopped", json_flag=False)
    add("outbox", cmd_outbox, "queued, sent and failed messages", json_flag=True)
    add("alerts", cmd_alerts, "open safety alerts, most urgent first", json_flag=True)
    p = add("ack", cmd_ack, "acknowledge (close) an open alert", mrn=True)
    p.add_argument("code")
    for feature in FEATURES:
        importlib.import_module(feature).register(add)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    app: App | None = None
    # Commands speak through their output and one error line; the log is for `cobalt run`.
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser(only=command_of(argv)).parse_args(argv)
        import logging

        for name in ("cobalt", "scheduler"):
            logging.getLogger(name).addHandler(logging.NullHandler())
        from scheduler.config import load_settings

        settings = load_settings()
        app = App(args, settings, datetime.now(UTC))
        args.fn(app)
        return 0
    except BadInput as exc:
        print(f"cobalt: {exc}", file=sys.stderr)
        return 2
    except CobaltError as exc:
        print(f"cobalt: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `cobalt schedule X | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _is_database_error(exc):
            raise
        print(f"cobalt: {describe_error(exc)}", file=sys.stderr)
        return 1
    finally:
        if app is not None:
            app.close()


# Start-up (the imports, the table classes, the settings) allocates a great deal and
# frees almost nothing: the cyclic garbage collector's passes over it are wasted work
# (a tenth of `cobalt due`). A command run from the console script starts with the
# collector paused; it resumes once the database is open, with what start-up built
# frozen (never scanned again: it lives as long as the process). `run()` called
# in-process, as the tests do, leaves the collector alone.
_gc_paused = False


def _start_up_done() -> None:
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()


def _is_database_error(exc: BaseException) -> bool:
    """A SQLAlchemy error, checked without importing SQLAlchemy for commands that never loaded it."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    return sa_exc is not None and isinstance(exc, sa_exc.SQLAlchemyError)


def main() -> NoReturn:
    global _gc_paused
    if gc.isenabled():
        gc.disable()
        _gc_paused = True
    sys.exit(run())
