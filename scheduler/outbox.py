"""Reminders: decide which messages are due at ``now``, queue them, deliver them.

Deciding and queueing happen in one transaction per kind: the candidates are
read through the (status, due) index, rendered, and inserted with
``ON CONFLICT DO NOTHING`` on the outbox's unique ``dedupe_key``, so a message
is queued at most once per (event, kind, recipient) whatever runs at the same
time. Delivery claims rows with one conditional UPDATE (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises it), sends,
and marks each row sent in its own transaction: a crash can repeat at most the
message in flight, never lose one. A claim expires, so a dead sender's rows
are taken over.

What counts as still useful after downtime (SPEC section 4):

- dose-reminder: from ``send_time`` on the day before the dose until the dose
  day begins (a "tomorrow" reminder for a day that has come is not sent);
- lab-reminder: from ``send_time`` seven days before, or at once when nearer,
  until the lab's day ends;
- overdue: from ``send_time`` on the day after, for up to
  ``overdue_catch_up_days`` days while the event is still not done;
- digest: once per open day, from ``send_time`` until the day ends.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Engine, and_, exists, func, or_, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from models import Event, LabResult, Outbox, Patient
from scheduler.config import Settings
from scheduler.db import chunked, transaction
from scheduler.mailer import FileMailer, Mailer, PermanentSendError, SmtpMailer, TemporarySendError
from scheduler.messages import PATIENT_KINDS, Message, Templates, make_message_id
from scheduler.safety import list_open_alerts, mark_notified, pending_urgent_alerts
from scheduler.store import drug_of, regimen_drugs
from scheduler.worklist import group_overdue

log = logging.getLogger("cobalt.outbox")

DOSE_REMINDER = "dose-reminder"
LAB_REMINDER = "lab-reminder"
OVERDUE = "overdue"
DIGEST = "digest"
ALERT = "alert"

LAB_REMINDER_DAYS = 7  # SPEC: 7 days before a lab order is due
DIGEST_UPCOMING_DAYS = 7  # SPEC: the digest lists what is due in the next 7 days
DIGEST_SECTION_LIMIT = 300  # items listed per digest section; the rest are counted (`cobalt due` lists all)
MAX_BACKOFF = timedelta(days=1)
QUEUE_BATCH = 500


@dataclass(frozen=True)
class Clock:
    """The one ``now`` of a pass, seen in the clinic's time zone."""

    now: datetime
    settings: Settings

    @property
    def local(self) -> datetime:
        return self.now.astimezone(self.settings.clinic.tz)

    @property
    def today(self) -> date:
        return self.local.date()

    @property
    def after_send_time(self) -> bool:
        return self.local.time() >= self.settings.clinic.send_at

    def start_of(self, day: date) -> datetime:
        """Local midnight of ``day``, in UTC (zoneinfo handles daylight saving)."""
        return datetime.combine(day, time(0), tzinfo=self.settings.clinic.tz).astimezone(UTC)


def make_mailer(settings: Settings) -> Mailer:
    smtp = settings.smtp
    if not smtp.host:
        return FileMailer(settings.outbox_path, smtp.sender)
    return SmtpMailer(smtp.host, smtp.port, smtp.sender, username=smtp.username,
                      password=smtp.password, starttls=smtp.starttls, timeout=smtp.timeout)


def _domain(settings: Settings) -> str:
    sender = settings.smtp.sender or settings.clinic.email
    return sender.rpartition("@")[2] or "cobalt.invalid"


def _clinic(settings: Settings) -> dict[str, str]:
    c = settings.clinic
    return {"name": c.name, "email": c.email, "timezone": c.timezone}


# -- queueing ------------------------------------------------------------------------


@dataclass
class _Draft:
    dedupe_key: str
    kind: str
    recipient: str
    context: dict[str, Any]
    patient_id: int | None = None
    event_id: int | None = None
    event_due: date | None = None
    not_after: datetime | None = None


def _insert(session: Session, templates: Templates, settings: Settings, drafts: Iterable[_Draft],
            now: datetime) -> int:
    rows = []
    for d in drafts:
        message_id = make_message_id(d.dedupe_key, _domain(settings))
        msg = templates.render(d.kind, d.context, to=d.recipient, message_id=message_id)
        rows.append({
            "dedupe_key": d.dedupe_key, "kind": d.kind, "recipient": d.recipient,
            "patient_id": d.patient_id, "event_id": d.event_id, "event_due": d.event_due,
            "message_id": message_id, "subject": msg.subject[:400], "body_text": msg.text,
            "body_html": msg.html, "status": "queued", "attempts": 0, "next_attempt_at": now,
            "not_after": d.not_after, "reported": False, "created_at": now,
        })
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(Outbox).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(col(Outbox.id))
    return len(session.connection().execute(stmt, rows).all())


def _not_queued(kind: str, recipient: Any) -> Any:
    return ~exists().where(
        col(Outbox.event_id) == col(Event.id), col(Outbox.kind) == kind, col(Outbox.recipient) == recipient
    )


def _latest_platelets(session: Session, patient_ids: Sequence[int]) -> dict[int, float]:
    rows = [
        row
        for chunk in chunked(list(patient_ids))
        for row in session.exec(
            select(col(LabResult.patient_id), col(LabResult.value), col(LabResult.taken_on), col(LabResult.id))
            .where(col(LabResult.code) == "platelets", col(LabResult.patient_id).in_(chunk),
                   col(LabResult.voided_at).is_(None))
        )
    ]
    latest: dict[int, tuple[date, int, float]] = {}
    for patient_id, value, taken_on, row_id in rows:
        if value is None:
            continue
        key = (taken_on, row_id or 0, value)
        if patient_id not in latest or key > latest[patient_id]:
            latest[patient_id] = key
    return {pid: v[2] for pid, v in latest.items()}


def _event_item(event: Event, patient: Patient, platelets: dict[int, float],
                drugs: dict[tuple[int, int], tuple[str, str]] | None = None) -> dict[str, Any]:
    drug, amount = drug_of(event, drugs or {})
    return {
        "mrn": patient.mrn, "name": patient.name, "kind": event.kind, "phase": event.phase,
        "label": event.label, "seq": event.seq, "due": event.due, "because": event.because,
        "tests": event.tests.split() if event.tests else [],
        "drug": drug, "amount": amount,  # a dose's drug and amount: "hydroxocobalamin", "1 mg"
        "platelets": platelets.get(patient.id or 0), "neuro": patient.neuro,
    }


def _patient_reminders(session: Session, clock: Clock, templates: Templates, kind: str) -> int:
    today = clock.today
    if kind == DOSE_REMINDER:
        if not clock.after_send_time:
            return 0
        window: tuple[Any, ...] = (col(Event.kind) == "dose", col(Event.due) == today + timedelta(days=1))
    else:
        last = today + timedelta(days=LAB_REMINDER_DAYS - (0 if clock.after_send_time else 1))
        window = (col(Event.kind) == "lab", col(Event.due) >= today, col(Event.due) <= last)
    query = (
        select(Event, Patient)
        .join(Patient, col(Patient.id) == col(Event.patient_id))
        .where(Event.status == "planned", *window, Patient.status == "active",
               col(Patient.opted_out).is_(False), col(Patient.email).is_not(None),
               _not_queued(kind, Patient.email))
        .order_by(col(Event.due), col(Event.id))
        .limit(QUEUE_BATCH)
    )

    def drafts(rows: list[tuple[Event, Patient]]) -> list[_Draft]:
        out = []
        for event, patient in rows:
            assert patient.email is not None
            not_after = clock.start_of(event.due + timedelta(days=0 if kind == DOSE_REMINDER else 1))
            out.append(_Draft(
                dedupe_key=f"{kind}:{event.id}:{patient.email.lower()}", kind=kind,
                recipient=patient.email, patient_id=patient.id, event_id=event.id,
                event_due=event.due, not_after=not_after,
                context={"clinic": _clinic(clock.settings), "patient": {"name": patient.name},
                         "due": event.due, "time": ""},
            ))
        return out

    return _queue_in_batches(session, query, drafts, clock, templates, single_day=kind == DOSE_REMINDER)


def _queue_in_batches(session: Session, query: Any, make_drafts: Callable[[list[Any]], list[_Draft]],
                      clock: Clock, templates: Templates, *, single_day: bool = False) -> int:
    """Read a batch of candidates (ordered by due date and id; the query leaves out
    what is queued), queue it, and go on after the last one read (keyset paging,
    so a busy morning does not rescan what it has passed)."""
    total = 0
    page = query
    while True:
        rows = list(session.exec(page))
        if not rows:
            return total
        total += _insert(session, templates, clock.settings, make_drafts(rows), clock.now)
        session.flush()
        last = rows[-1][0]
        if single_day:  # keep the index range on `due = day`; page by id within it
            page = query.where(col(Event.id) > last.id)
        else:
            page = query.where(tuple_(col(Event.due), col(Event.id)) > tuple_(last.due, last.id))


def _overdue_notices(session: Session, clock: Clock, templates: Templates) -> int:
    today = clock.today
    latest = today - timedelta(days=1 if clock.after_send_time else 2)
    earliest = today - timedelta(days=clock.settings.scheduler.overdue_catch_up_days)
    recipient = clock.settings.clinic.email
    query = (
        select(Event, Patient)
        .join(Patient, col(Patient.id) == col(Event.patient_id))
        .where(Event.status == "planned", col(Event.due) >= earliest, col(Event.due) <= latest,
               Patient.status == "active", _not_queued(OVERDUE, recipient))
        .order_by(col(Event.due), col(Event.id))
        .limit(QUEUE_BATCH)
    )

    def drafts(rows: list[tuple[Event, Patient]]) -> list[_Draft]:
        platelets = _latest_platelets(session, [p.id for _, p in rows if p.id is not None])
        drugs = regimen_drugs(session, [p.id for _, p in rows if p.id is not None])
        return [
            _Draft(
                dedupe_key=f"{OVERDUE}:{event.id}:{recipient.lower()}", kind=OVERDUE,
                recipient=recipient, patient_id=patient.id, event_id=event.id, event_due=event.due,
                context={
                    "clinic": _clinic(clock.settings), "today": today,
                    "patient": {"mrn": patient.mrn, "name": patient.name, "neuro": patient.neuro,
                                "platelets": platelets.get(patient.id or 0)},
                    "event": _event_item(event, patient, platelets, drugs),
                },
            )
            for event, patient in rows
        ]

    return _queue_in_batches(session, query, drafts, clock, templates)


def _digest(session: Session, clock: Clock, templates: Templates) -> int:
    settings = clock.settings
    today = clock.today
    if not clock.after_send_time or not settings.clinic.calendar().is_open(today):
        return 0
    recipient = settings.clinic.email
    key = f"{DIGEST}:{today.isoformat()}:{recipient.lower()}"
    if session.exec(select(Outbox.id).where(Outbox.dedupe_key == key)).first() is not None:
        return 0
    sections: dict[str, list[dict[str, Any]]] = {}
    totals: dict[str, int] = {}
    for name, window in (
        ("due_today", col(Event.due) == today),
        ("overdue", col(Event.due) < today),
        ("upcoming", and_(col(Event.due) > today, col(Event.due) <= today + timedelta(days=DIGEST_UPCOMING_DAYS))),
    ):
        base = (select(Event, Patient).join(Patient, col(Patient.id) == col(Event.patient_id))
                .where(col(Event.status) == "planned", window, col(Patient.status) == "active"))
        totals[name] = session.exec(select(func.count()).select_from(base.subquery())).one()
        rows = list(session.exec(base.order_by(col(Event.due), col(Patient.mrn), col(Event.id))
                                 .limit(DIGEST_SECTION_LIMIT)))
        ids = sorted({p.id for _, p in rows if p.id is not None})
        platelets = _latest_platelets(session, ids)
        drugs = regimen_drugs(session, ids)
        items = [_event_item(e, p, platelets, drugs) for e, p in rows]
        for item in items:
            item["overdue"] = item["due"] < today
        # A patient's overdue events of one kind are one line: "3 maintenance doses overdue since ..."
        sections[name] = group_overdue(items)
    failed_rows = list(session.exec(
        select(Outbox).where(Outbox.status == "failed", col(Outbox.reported).is_(False))
        .order_by(col(Outbox.id)).limit(500)
    ))
    alerts = [
        {**a, "since": date.fromisoformat(a["since"]) if isinstance(a["since"], str) else a["since"]}
        for a in list_open_alerts(session)
    ]
    context = {
        "clinic": _clinic(settings), "today": today,
        **sections,
        "totals": totals,
        "alerts": alerts,
        "failed": [{"kind": f.kind, "to": f.recipient, "subject": f.subject,
                    "error": f.last_error or ""} for f in failed_rows],
    }
    draft = _Draft(dedupe_key=key, kind=DIGEST, recipient=recipient, context=context,
                   not_after=clock.start_of(today + timedelta(days=1)))
    queued = _insert(session, templates, settings, [draft], clock.now)
    if queued:
        purge_old_bodies(session, settings, clock.now)
    if failed_rows:
        session.execute(update(Outbox).where(col(Outbox.id).in_([f.id for f in failed_rows]))
                        .values(reported=True))
    return queued


def _urgent_alerts(session: Session, clock: Clock, templates: Templates) -> int:
    pending = pending_urgent_alerts(session)
    if not pending:
        return 0
    recipient = clock.settings.clinic.email
    drafts = []
    for alert in pending:
        drafts.append(_Draft(
            dedupe_key=f"{ALERT}:{alert['id']}:{recipient.lower()}", kind=ALERT,
            recipient=recipient, patient_id=alert["patient_id"],
            context={
                "clinic": _clinic(clock.settings),
                "patient": {"mrn": alert["mrn"], "name": alert["name"]},
                "alert": {"code": alert["code"], "severity": alert["severity"],
                          "message": alert["message"], "since": alert["since"]},
            },
        ))
    queued = _insert(session, templates, clock.settings, drafts, clock.now)
    mark_notified(session, [a["id"] for a in pending])
    return queued


def queue_due_messages(engine: Engine, settings: Settings, now: datetime,
                       templates: Templates | None = None) -> int:
    """Decide and queue every message due at ``now``; returns how many were queued.

    Each kind is its own transaction: one that fails (a broken template) is rolled
    back and raised after the others have been queued, so it holds up nothing else.
    """
    if templates is None:
        templates = Templates(settings.templates_path) if settings.templates_path else Templates()
    clock = Clock(now, settings)
    total = 0
    failure: Exception | None = None
    for step in (
        lambda s: _urgent_alerts(s, clock, templates),
        lambda s: _patient_reminders(s, clock, templates, DOSE_REMINDER),
        lambda s: _patient_reminders(s, clock, templates, LAB_REMINDER),
        lambda s: _overdue_notices(s, clock, templates),
        lambda s: _digest(s, clock, templates),
    ):
        try:
            with transaction(engine) as session:
                total += step(session)
        except Exception as exc:
            log.error("queueing failed (%s); the other kinds go on", type(exc).__name__)
            failure = failure or exc
    if failure is not None:
        raise failure
    return total


# -- delivery ------------------------------------------------------------------------


@dataclass
class Delivery:
    sent: int = 0
    skipped: int = 0
    retried: int = 0
    failed: int = 0


def backoff(settings: Settings, attempts: int) -> timedelta:
    """base * 2**(attempts - 1), capped at a day."""
    delay = timedelta(seconds=settings.scheduler.retry_base_seconds * 2 ** max(attempts - 1, 0))
    return min(delay, MAX_BACKOFF)


def _claim(engine: Engine, settings: Settings, now: datetime, token: str) -> list[Outbox]:
    """Claim up to a batch of sendable rows with one conditional UPDATE."""
    ready = or_(
        and_(col(Outbox.status) == "queued", col(Outbox.next_attempt_at) <= now),
        and_(col(Outbox.status) == "sending", col(Outbox.claimed_until) < now),
    )
    with transaction(engine) as session:
        pick = select(Outbox.id).where(ready).order_by(col(Outbox.id)).limit(settings.scheduler.batch_size)
        if engine.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        ids = [row for row in session.exec(pick)]
        if not ids:
            return []
        session.execute(
            update(Outbox)
            .where(col(Outbox.id).in_(ids), ready)
            .values(status="sending", claimed_by=token,
                    claimed_until=now + timedelta(seconds=settings.scheduler.claim_seconds))
        )
        return list(session.exec(
            select(Outbox).where(Outbox.claimed_by == token, Outbox.status == "sending")
            .order_by(col(Outbox.id))
        ))


def _stale_reason(row: Outbox, now: datetime, events: dict[int, Event],
                  patients: dict[int, Patient]) -> str | None:
    if row.not_after is not None and now >= row.not_after:
        return "its time has passed"
    patient = patients.get(row.patient_id) if row.patient_id else None
    if patient is not None and patient.status != "active":
        return "the patient was discharged"
    if row.kind in PATIENT_KINDS and patient is not None and (patient.opted_out or not patient.email):
        return "the patient opted out"
    if row.event_id is not None:
        event = events.get(row.event_id)
        if event is None or event.status != "planned":
            return "the event is done or cancelled"
        if row.kind in PATIENT_KINDS and event.due != row.event_due:
            return "the event moved"
    return None


def _finish(engine: Engine, row: Outbox, token: str, **values: Any) -> None:
    with transaction(engine) as session:
        session.execute(
            update(Outbox)
            .where(col(Outbox.id) == row.id, col(Outbox.claimed_by) == token,
                   col(Outbox.status) == "sending")
            .values(claimed_by=None, claimed_until=None, **values)
        )


def _as_message(row: Outbox) -> Message:
    return Message(kind=row.kind, to=row.recipient, subject=row.subject, text=row.body_text,
                   html=row.body_html, message_id=row.message_id)


def deliver(engine: Engine, settings: Settings, now: datetime, mailer: Mailer | None = None,
            max_batches: int | None = None) -> Delivery:
    """Send what is queued and due; retry temporary failures with back-off."""
    mailer = mailer or make_mailer(settings)
    token = uuid.uuid4().hex[:16]
    report = Delivery()
    batches = 0
    while max_batches is None or batches < max_batches:
        batches += 1
        rows = _claim(engine, settings, now, token)
        if not rows:
            break
        with transaction(engine) as session:
            event_ids = [r.event_id for r in rows if r.event_id is not None]
            patient_ids = [r.patient_id for r in rows if r.patient_id is not None]
            events = {e.id: e for e in session.exec(select(Event).where(col(Event.id).in_(event_ids)))}
            patients = {p.id: p for p in session.exec(select(Patient).where(col(Patient.id).in_(patient_ids)))}
        outage = False
        retry_at = now
        with mailer.session() as sender:
            for row in rows:
                if outage:
                    _finish(engine, row, token, status="queued", next_attempt_at=retry_at)
                    continue
                reason = _stale_reason(row, now, events, patients)  # type: ignore[arg-type]
                if reason:
                    _finish(engine, row, token, status="skipped", last_error=f"not sent: {reason}")
                    report.skipped += 1
                    continue
                attempts = row.attempts + 1
                try:
                    sender.send(_as_message(row))
                except TemporarySendError as exc:
                    retry_at = now + backoff(settings, attempts)
                    if attempts >= settings.scheduler.max_attempts:
                        _finish(engine, row, token, status="failed", attempts=attempts,
                                last_error=str(exc)[:400])
                        report.failed += 1
                    else:
                        _finish(engine, row, token, status="queued", attempts=attempts,
                                next_attempt_at=retry_at, last_error=str(exc)[:400])
                        report.retried += 1
                    log.warning("temporary failure sending %s (%s); retrying later", row.message_id, row.kind)
                    outage = True
                except PermanentSendError as exc:
                    _finish(engine, row, token, status="failed", attempts=attempts,
                            last_error=str(exc)[:400])
                    report.failed += 1
                    log.warning("permanent failure sending %s (%s)", row.message_id, row.kind)
                else:
                    _finish(engine, row, token, status="sent", attempts=attempts, sent_at=now,
                            last_error=None)
                    report.sent += 1
        if outage:
            break
    return report


def purge_old_bodies(session: Session, settings: Settings, now: datetime) -> int:
    """Clear the bodies of messages sent (or skipped, or failed and reported) more
    than ``outbox_keep_days`` ago. The rows stay: they are what makes a message
    once-only. Runs once a day, with the digest (whose unique key makes sure one
    process does it), as it reads the old rows."""
    done = or_(col(Outbox.status).in_(["sent", "skipped"]),
               and_(col(Outbox.status) == "failed", col(Outbox.reported).is_(True)))
    result = session.execute(
        update(Outbox)
        .where(done, col(Outbox.created_at) < now - timedelta(days=settings.scheduler.outbox_keep_days),
               col(Outbox.body_text) != "")
        .values(body_text="", body_html="")
    )
    return int(getattr(result, "rowcount", 0) or 0)


# -- listing -------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def outbox_json(session: Session, limit: int = 1000) -> list[dict[str, Any]]:
    rows = session.exec(
        select(Outbox, Patient.mrn).join(Patient, col(Patient.id) == col(Outbox.patient_id), isouter=True)
        .order_by(col(Outbox.id).desc()).limit(limit)
    )
    return [
        {
            "id": o.id, "kind": o.kind, "to": o.recipient, "mrn": mrn, "status": o.status,
            "subject": o.subject, "message_id": o.message_id, "event_id": o.event_id,
            "attempts": o.attempts, "queued_at": _iso(o.created_at), "sent_at": _iso(o.sent_at),
            "next_attempt_at": _iso(o.next_attempt_at) if o.status == "queued" else None,
            "error": o.last_error,
        }
        for o, mrn in rows
    ]


def outbox_text(data: list[dict[str, Any]]) -> str:
    """A table with headers; "sent at" and "next try" are separate columns."""
    if not data:
        return "the outbox is empty"

    def at(value: str | None) -> str:
        return value[:16].replace("T", " ") if value else ""

    headers = ["id", "status", "kind", "to", "queued at", "sent at", "next try", "tries", "subject", "error"]
    rows = [[str(m["id"]), m["status"], m["kind"], m["to"], at(m["queued_at"]), at(m["sent_at"]),
             at(m["next_attempt_at"]), str(m["attempts"]), m["subject"], m["error"] or ""] for m in data]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
