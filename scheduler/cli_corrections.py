"""Commands of SPEC section 7: finding patients, editing their details, voiding a
record entered in error, moving a planned event, and reading the audit trail.

Only the standard library is imported here: each command imports what it needs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scheduler.cli import App

Add = Callable[..., argparse.ArgumentParser]


def _event_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an event id (a number from `cobalt schedule`)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an event id (a number from `cobalt schedule`)")
    return value


def cmd_patients(app: App) -> None:
    from scheduler import db, service
    from scheduler.cli import _table

    with db.transaction(app.engine) as session:
        data = service.list_patients(session, app.context(), search=app.args.search, status=app.args.status)

    def text() -> str:
        if not data:
            return "no patients found"
        rows = [[p["mrn"], p["name"], p["protocol"] or "", p["status"],
                 f"{p['next_due']['date']} {p['next_due']['kind']}" if p["next_due"] else "",
                 ", ".join(p["open_alerts"])] for p in data]
        return _table(rows, ["mrn", "name", "protocol", "status", "next due", "open alerts"])

    app.out(data, text)


def cmd_edit(app: App) -> None:
    from scheduler import db, service

    a = app.args
    changes: dict[str, Any] = {
        "name": a.name, "email": "" if a.no_email else a.email, "phone": "" if a.no_phone else a.phone,
        "neuro": a.neuro, "renal_impairment": a.renal_impairment, "on_folic_acid": a.on_folic_acid,
    }
    with db.transaction(app.engine) as session:
        patient = service.edit_patient(session, app.context(), a.mrn, **changes)
        from scheduler.safety import alerts_json
        from scheduler.store import load_record

        data: dict[str, Any] = {
                "mrn": patient.mrn, "name": patient.name, "email": patient.email, "phone": patient.phone,
                "neuro": patient.neuro, "renal_impairment": patient.renal_impairment,
                "on_folic_acid": patient.on_folic_acid,
                "alerts": alerts_json(load_record(session, patient))}
    alerts = ", ".join(al["code"] for al in data["alerts"])
    app.out(data, f"{a.mrn}: details saved" + (f"; open alerts: {alerts}" if alerts else ""))


def cmd_void(app: App) -> None:
    from scheduler import db, service
    from scheduler.store import event_json

    a = app.args
    with db.transaction(app.engine) as session:
        event = service.void_record(session, app.context(), a.mrn, a.event_id, a.reason)
        data = {"mrn": a.mrn, "voided": a.event_id, "reason": a.reason.strip(), "event": event_json(event)}
    app.out(data, f"{a.mrn}: the record of event {a.event_id} is void ({a.reason.strip()}); "
                  f"{event.kind} {event.label} {event.seq} is now {event.status}, due {event.due.isoformat()}")


def cmd_move(app: App) -> None:
    from scheduler import db, service
    from scheduler.store import event_json

    a = app.args
    with db.transaction(app.engine) as session:
        event = service.move_event(session, app.context(), a.mrn, a.event_id, a.to, a.reason)
        data = {"mrn": a.mrn, "event": event_json(event), "reason": (a.reason or "").strip() or None}
    app.out(data, f"{a.mrn}: {event.kind} {event.label} {event.seq} moved to {event.due.isoformat()}")


def cmd_audit(app: App) -> None:
    from scheduler import db, service

    a = app.args
    with db.transaction(app.engine) as session:
        data = service.audit_trail(session, mrn=a.mrn, since=a.since, tz=app.settings.clinic.tz)

    def text() -> str:
        if not data:
            return "the audit trail is empty" + (f" for {a.mrn}" if a.mrn else "")
        lines = []
        for row in data:
            details = row["details"]
            said = ", ".join(f"{k}={_said(v)}" for k, v in details.items())
            lines.append(f"{row['at'][:19].replace('T', ' ')}  {row['by']:<12} {row['action']:<16} "
                         f"{row['mrn'] or '-':<10} {said}")
        return "\n".join(lines)

    app.out(data, text)


def _said(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_said(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_said(v) for v in value) + "]"
    return str(value)


def register(add: Add) -> None:
    from scheduler.cli import _date

    p = add("patients", cmd_patients, "patients: search by MRN or name, with what is next and open alerts")
    p.add_argument("--search", metavar="TEXT", help="the start of the MRN, or any part of the name (any case)")
    p.add_argument("--status", choices=("active", "discharged", "all"), default="active",
                   help="which patients (default: active)")

    p = add("edit", cmd_edit, "change a patient's details; alerts are re-evaluated", mrn=True)
    p.add_argument("--name")
    email = p.add_mutually_exclusive_group()
    email.add_argument("--email")
    email.add_argument("--no-email", action="store_true", help="remove the email address")
    phone = p.add_mutually_exclusive_group()
    phone.add_argument("--phone")
    phone.add_argument("--no-phone", action="store_true", help="remove the phone number")
    for flag, dest, off in (("--neuro", "neuro", "--no-neuro"),
                            ("--renal-impairment", "renal_impairment", "--no-renal-impairment"),
                            ("--on-folic-acid", "on_folic_acid", "--no-folic-acid")):
        group = p.add_mutually_exclusive_group()
        group.add_argument(flag, dest=dest, action="store_const", const=True, default=None)
        group.add_argument(off, dest=dest, action="store_const", const=False)

    p = add("void", cmd_void, "the record that completed an event was entered in error: void it", mrn=True)
    p.add_argument("event_id", type=_event_id, metavar="EVENT-ID", help="the event's id (cobalt schedule)")
    p.add_argument("--reason", required=True, help="why the record is void")

    p = add("move", cmd_move, "move a planned dose, lab or review to another day", mrn=True)
    p.add_argument("event_id", type=_event_id, metavar="EVENT-ID", help="the event's id (cobalt schedule)")
    p.add_argument("--to", type=_date, required=True, help="the new day (YYYY-MM-DD)")
    p.add_argument("--reason", help="why (the patient cannot come that day, ...)")

    p = add("audit", cmd_audit, "the audit trail, newest first")
    p.add_argument("mrn", nargs="?", help="only this patient")
    p.add_argument("--since", type=_date, help="from this day (YYYY-MM-DD, the clinic's time zone)")
