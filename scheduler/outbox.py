"""Reminders: decide which messages are due at ``now``, queue them, deliver them.

Deciding and queueing happen in one transaction per kind: the events of the
kind's window are claimed (``scheduler.told``), the candidates among them read
by id, rendered, and inserted a batch at a time (one executemany) with
``ON CONFLICT DO NOTHING`` on the outbox's unique ``dedupe_key``, so a message
is queued at most once per (event, kind, recipient) whatever runs at the same
time. Delivery claims rows with one conditional UPDATE (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises it), sends,
and marks each row sent in its own transaction (not synced to the disk; the
batch's last one is, and with it the batch): a killed process can repeat at most
the message in flight, a power cut at most a batch, and neither loses one. A claim is a short lease that the sender
renews while it works, so a dead sender's rows are taken over within
``claim_seconds`` (docs/faults.md).

When each message falls due (SPEC sections 4 and 8; docs/messages.md):

- A patient message falls due at ``send_time`` on one clinic day, its day, and
  is sent on that day only, at or after ``send_time`` (a pass after downtime
  catches up within the day). What the plan makes or moves after a day's
  ``send_time`` waits for the next day's: the event's ``due_set_at`` says when.
- dose-reminder: the day before the dose; nothing when that day has come (a
  "tomorrow" reminder for a day that has come is not sent). A patient who chose
  ``first-of-week`` hears of the first loading dose of each week only.
- lab-reminder: seven days before, or the first day the order is known when it
  is nearer (an order due "at once" made at 18:00 is told the next morning);
  the orders of one patient due on one day make one reminder.
- changed: the first day, at ``send_time``, after an event the patient was told
  of moved or was cancelled, while the date they were told has not passed.
- missed: ``missed_after_days`` after a dose that is still not given.
- overdue: from ``send_time`` on the day after, for up to
  ``overdue_catch_up_days`` days while the event is still not done;
- digest: once per open day, from ``send_time`` until the day ends.

The once-only key of a reminder carries the due date it speaks of, so an event
that moves is reminded of its new date once. Patient messages whose day a
downtime passed over are recorded as skipped (``skip_passed_moments``), counted
in the pass's ``skipped`` and listed in the next digest.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from time import monotonic
from typing import Any

from sqlalchemy import Engine, and_, exists, func, literal_column, or_, union, update
from sqlalchemy import select as select_columns  # plain rows, not ORM objects
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from models import PLANNED, Event, LabResult, MailServer, Outbox, PassMark, Patient
from scheduler.config import Settings
from scheduler.db import chunked, insert_rows, refresh_statistics, transaction
from scheduler.domain import Kind
from scheduler.export_ics import reminder_calendars
from scheduler.mailer import (
    FileMailer,
    Mailer,
    PermanentSendError,
    ServerUnavailable,
    SmtpMailer,
    TemporarySendError,
)
from scheduler.messages import PATIENT_KINDS, Message, Templates, make_message_id
from scheduler.safety import list_open_alerts, mark_notified, open_alert_count, pending_urgent_alerts
from scheduler.store import drug_of, regimen_drugs
from scheduler.told import MISSED as MISSED_MARK
from scheduler.told import OVERDUE as OVERDUE_MARK
from scheduler.told import REMINDED, claim, claim_changes, list_changes
from scheduler.worklist import group_overdue

log = logging.getLogger("cobalt.outbox")

DOSE_REMINDER = "dose-reminder"
LAB_REMINDER = "lab-reminder"
OVERDUE = "overdue"
DIGEST = "digest"
ALERT = "alert"
CHANGED = "changed"
MISSED = "missed"

EVERY_DOSE = "every-dose"
FIRST_OF_WEEK = "first-of-week"
LOADING_CHOICES = (EVERY_DOSE, FIRST_OF_WEEK)

LAB_REMINDER_DAYS = 7  # SPEC: 7 days before a lab order is due
LAB_LATE_REMINDER_DAYS = 7  # an order dated back (due "at once" on a past day) is still told this long after
DOWNTIME_LOOKBACK_DAYS = 31  # after a longer downtime, the skipped reminders of the days before are not counted
SKIPPED_WHILE_DOWN = "not sent: its time has passed (no pass ran on its day)"
MOMENT_PASSED = "not sent: its time has passed%"  # delivery's and ours: what the digest lists
PATIENT_MESSAGES_MARK = "patient-messages"
DIGEST_UPCOMING_DAYS = 7  # SPEC: the digest lists what is due in the next 7 days
DIGEST_SECTION_LIMIT = 300  # items listed per digest section; the rest are counted (`cobalt due` lists all)
MAX_BACKOFF = timedelta(days=1)
EVENT_KINDS = tuple(kind.value for kind in Kind)
QUEUE_BATCH = 500  # messages rendered and written together
CLAIMED_READ = 5_000  # claimed events read together (most are not owed a message: done, told, unreachable)


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

    def send_moment(self, day: date) -> datetime:
        """``send_time`` on ``day``, in UTC."""
        return datetime.combine(day, self.settings.clinic.send_at, tzinfo=self.settings.clinic.tz).astimezone(UTC)

    def known_since(self, due_set_at: datetime | None) -> datetime | None:
        """When the plan gave an event its present date, as this pass sees it: a stamp
        later than the pass's ``now`` (a pass run with a past ``--now``) counts as
        long known (None)."""
        return due_set_at if due_set_at is not None and due_set_at <= self.now else None

    def first_send_day(self, at: datetime) -> date:
        """The clinic day whose ``send_time`` is the first at or after ``at``."""
        day = at.astimezone(self.settings.clinic.tz).date()
        return day if at <= self.send_moment(day) else day + timedelta(days=1)

    def reminder_day(self, kind: str, due: date, due_set_at: datetime | None) -> date | None:
        """The day a reminder of an event due on ``due`` falls due, or None when it never
        does (a dose moved to tomorrow after today's send_time; an order told too late)."""
        lead = 1 if kind == "dose" else LAB_REMINDER_DAYS
        day = due - timedelta(days=lead)
        known = self.known_since(due_set_at)
        if known is not None:
            day = max(day, self.first_send_day(known))
        if kind == "dose":
            return day if day < due else None
        return day if day <= due + timedelta(days=LAB_LATE_REMINDER_DAYS) else None

    def known_by(self, moment: datetime) -> Any:
        """SQL: the event had its present date at ``moment`` (or its stamp is past ``now``)."""
        return or_(col(Event.due_set_at).is_(None), col(Event.due_set_at) <= moment,
                   col(Event.due_set_at) > self.now)


def make_mailer(settings: Settings) -> Mailer:
    smtp = settings.smtp
    # From carries the clinic's name; replies go to the clinic's own address.
    named = {"sender_name": settings.clinic.name, "reply_to": settings.clinic.email}
    if not smtp.host:
        return FileMailer(settings.outbox_path, smtp.sender, **named)
    return SmtpMailer(smtp.host, smtp.port, smtp.sender, username=smtp.username,
                      password=smtp.password, starttls=smtp.starttls, timeout=smtp.timeout, **named)


def _domain(settings: Settings) -> str:
    sender = settings.smtp.sender or settings.clinic.email
    return sender.rpartition("@")[2] or "cobalt.invalid"


def _clinic(settings: Settings) -> dict[str, str]:
    c = settings.clinic
    return {"name": c.name, "email": c.email, "timezone": c.timezone, "address": c.address,
            "phone": c.phone, "hours": c.hours}


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
    """Render the drafts and queue them with one executemany, ``ON CONFLICT (dedupe_key)
    DO NOTHING``: a message another process queued meanwhile is left out, so the unique
    key stays the last word on once-only. Returns the rows queued."""
    domain = _domain(settings)
    rows: list[tuple[Any, ...]] = []
    for d in drafts:
        message_id = make_message_id(d.dedupe_key, domain)
        msg = templates.render(d.kind, d.context, to=d.recipient, message_id=message_id)
        rows.append((d.dedupe_key, d.kind, d.recipient, d.patient_id, d.event_id, d.event_due, message_id,
                     msg.subject[:400], msg.text, msg.html, "queued", 0, now, d.not_after, False, now))
    if not rows:
        return 0
    # Values turned into the driver's once per distinct value: a batch shares `now`, its days.
    return insert_rows(session.connection(), Outbox.__table__, _OUTBOX_COLUMNS, rows,  # type: ignore[attr-defined]
                       skip_conflicts_on=("dedupe_key",))


_OUTBOX_COLUMNS = ("dedupe_key", "kind", "recipient", "patient_id", "event_id", "event_due", "message_id",
                   "subject", "body_text", "body_html", "status", "attempts", "next_attempt_at", "not_after",
                   "reported", "created_at")


def _not_queued(kind: str, recipient: Any) -> Any:
    return ~exists().where(
        col(Outbox.event_id) == col(Event.id), col(Outbox.kind) == kind, col(Outbox.recipient) == recipient
    )


def _not_told(kind: str) -> Any:
    """No message of ``kind`` about this event's present date to the patient's address."""
    return ~exists().where(
        col(Outbox.event_id) == col(Event.id), col(Outbox.kind) == kind,
        col(Outbox.event_due) == col(Event.due), col(Outbox.recipient) == col(Patient.email),
    )


def _reachable() -> tuple[Any, ...]:
    """A patient who receives messages."""
    return (Patient.status == "active", col(Patient.opted_out).is_(False), col(Patient.email).is_not(None))


def _week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _first_of_week_only(day: date) -> Any:
    """SQL, for doses due on ``day``: the patient hears of every dose, or this is not a
    loading dose, or no loading dose of theirs comes before it in its week."""
    earlier = aliased(Event)
    return or_(
        col(Patient.loading_reminders) != FIRST_OF_WEEK,
        col(Event.phase) != "loading",
        ~exists().where(
            col(earlier.patient_id) == col(Event.patient_id), col(earlier.kind) == "dose",
            col(earlier.phase) == "loading", col(earlier.status).in_(["planned", "done"]),
            col(earlier.due) >= _week_start(day), col(earlier.due) < col(Event.due),
        ),
    )


def _dose_key(kind: str, event_id: int | None, due: date, email: str) -> str:
    return f"{kind}:{event_id}:{due.isoformat()}:{email.lower()}"


def _lab_key(patient_id: int | None, due: date, told_on: date, email: str) -> str:
    """One blood-test reminder per patient, due date and reminder day: the orders due on
    one day make one reminder; an order made later (due "at once" on a day whose other
    order is done) is one more."""
    return f"{LAB_REMINDER}:p{patient_id}:{due.isoformat()}:{told_on.isoformat()}:{email.lower()}"


def _patient_reminders(session: Session, clock: Clock, templates: Templates, kind: str) -> int:
    """The reminders whose day is today, from ``send_time`` on (see the module's notes)."""
    if not clock.after_send_time:
        return 0
    today = clock.today
    sent_at = clock.send_moment(today)
    if kind == DOSE_REMINDER:
        tomorrow = today + timedelta(days=1)
        event_kind = "dose"
        window: tuple[Any, ...] = (col(Event.due) == tomorrow, clock.known_by(sent_at))
        only: tuple[Any, ...] = (_first_of_week_only(tomorrow),)
        decided = window
    else:
        ahead = today + timedelta(days=LAB_REMINDER_DAYS)
        event_kind = "lab"
        since = (col(Event.due) >= today - timedelta(days=LAB_LATE_REMINDER_DAYS), col(Event.due) <= ahead)
        today_s = or_(and_(col(Event.due) == ahead, clock.known_by(sent_at)),
                      and_(col(Event.due_set_at) > clock.send_moment(today - timedelta(days=1)),
                           col(Event.due_set_at) <= sent_at))
        window = (*since, today_s)
        only = ()
        # An order whose reminder day came before today (told then, or passed over in a
        # downtime) is decided too: nothing is sent for it again.
        passed = and_(col(Event.due) < ahead,
                      or_(col(Event.due_set_at).is_(None),
                          col(Event.due_set_at) <= clock.send_moment(today - timedelta(days=1))))
        decided = (*since, or_(today_s, passed))
    # Every event whose reminder day is today is decided now: told, or not owed.
    claimed = claim(session, REMINDED, [event_kind], *decided)
    query = (
        select_columns(*_TO_PATIENT)
        .join(Patient, col(Patient.id) == col(Event.patient_id))
        .where(col(Event.status) == "planned", col(Event.kind) == event_kind, *window, *only, *_reachable(),
               _not_told(kind))
    )
    clinic = _clinic(clock.settings)  # one context's shared parts, for every message of the kind
    not_after = clock.start_of(today + timedelta(days=1))

    def drafts(rows: Sequence[Any]) -> list[_Draft]:
        out = []
        for event_id, due, patient_id, name, email in rows:
            key = (_dose_key(kind, event_id, due, email) if kind == DOSE_REMINDER
                   else _lab_key(patient_id, due, today, email))
            out.append(_Draft(
                dedupe_key=key, kind=kind, recipient=email, patient_id=patient_id,
                event_id=event_id, event_due=due, not_after=not_after,
                # An order dated back ("at once" yesterday) is due now: the patient is told today.
                context={"clinic": clinic, "patient": {"name": name}, "due": max(due, today), "time": ""},
            ))
        return out

    return _queue_claimed(session, claimed, query, drafts, clock, templates)


# What a patient message is made of: the event, and the patient it goes to.
_TO_PATIENT = (col(Event.id), col(Event.due), col(Patient.id), col(Patient.name), col(Patient.email))


def _changed_notices(session: Session, clock: Clock, templates: Templates) -> int:
    """Tell a patient whose event moved or was cancelled after they were told its date.

    Reads the messages sent about dates not yet passed (by kind and date, through
    the outbox's index) whose event now says otherwise; one ``changed`` message per
    (event, new date, recipient). The day is what the patient was told: while
    another event of the same kind stays on it (a second blood test; the new
    protocol's dose after a switch), that day still holds and nothing is sent.
    """
    if not clock.after_send_time:
        return 0
    today = clock.today
    # Only the events changed (or gone) since a pass last looked, once the change is
    # known by today's send_time; a later one waits for tomorrow's.
    sent_at = clock.send_moment(today)
    changed = claim_changes(session, lambda stamp: (known := clock.known_since(stamp)) is None or known <= sent_at)
    return sum(_changed_among(session, clock, templates, chunk) for chunk in chunked(changed))


def _changed_among(session: Session, clock: Clock, templates: Templates, event_ids: Sequence[int]) -> int:
    today = clock.today
    query = (
        select(Outbox, Event, Patient)
        .join(Patient, col(Patient.id) == col(Outbox.patient_id))
        .join(Event, col(Event.id) == col(Outbox.event_id), isouter=True)
        # Read through (kind, event_due, event_id): the messages about dates still ahead.
        # Whether one was sent is checked below, so no plan reads every sent row by status.
        .where(col(Outbox.event_id).in_(event_ids),
               col(Outbox.kind).in_([DOSE_REMINDER, LAB_REMINDER, CHANGED]), col(Outbox.event_due) >= today,
               col(Patient.opted_out).is_(False),
               col(Patient.email).is_not(None),
               or_(col(Event.id).is_(None),
                   and_(col(Event.status).in_(["cancelled", "held"]), clock.known_by(clock.send_moment(today))),
                   and_(col(Event.status) == "planned", col(Event.due) != col(Outbox.event_due),
                        col(Event.due) >= today, clock.known_by(clock.send_moment(today)))))
        .order_by(col(Outbox.id))
    )
    rows = list(session.exec(query))
    # A message still on its way may yet be sent: look at its event again next pass.
    list_changes(session, [told.event_id for told, _, _ in rows
                           if told.status in ("queued", "sending") and told.event_id is not None])
    rows = [row for row in rows if row[0].status == "sent"]
    if not rows:
        return 0

    def kind_of(told: Outbox, event: Event | None) -> str:
        if event is not None:
            return event.kind
        return "lab" if told.kind == LAB_REMINDER else "dose"

    # A day told of still holds while another event of that kind stays on it (a switch
    # replaces a dose with the new protocol's dose on the same day; two orders, one visit).
    still_on: set[tuple[int | None, str, date]] = set()
    pids = sorted({p.id for _, _, p in rows if p.id is not None})
    days = sorted({told.event_due for told, _, _ in rows if told.event_due is not None})
    for chunk in chunked(pids):
        still_on.update(session.exec(
            select(col(Event.patient_id), col(Event.kind), col(Event.due))
            .where(col(Event.status) == "planned", col(Event.due).in_(days), col(Event.patient_id).in_(chunk))
        ))
    drafts: dict[str, _Draft] = {}
    held: list[int] = []  # the day told still holds, for now: look again next pass
    for told, event, patient in rows:
        assert patient.email is not None and told.event_due is not None
        kind = kind_of(told, event)
        if (patient.id, kind, told.event_due) in still_on:
            if told.event_id is not None:
                held.append(told.event_id)
            continue
        lab = kind == "lab"
        new = event.due if event is not None and event.status == "planned" else None
        if new is not None and patient.status != "active":
            continue
        key = f"{CHANGED}:{told.event_id}:{new.isoformat() if new else 'cancelled'}:{patient.email.lower()}"
        last_day = min(told.event_due, new) if new else told.event_due
        drafts[key] = _Draft(  # the latest message told wins: it is what the patient believes
            dedupe_key=key, kind=CHANGED, recipient=patient.email, patient_id=patient.id,
            event_id=told.event_id, event_due=new, not_after=clock.start_of(last_day + timedelta(days=1)),
            context={"clinic": _clinic(clock.settings), "patient": {"name": patient.name},
                     "what": "blood test" if lab else "appointment", "old": told.event_due, "new": new},
        )
    list_changes(session, held)
    done = set(session.exec(select(col(Outbox.dedupe_key)).where(col(Outbox.dedupe_key).in_(list(drafts)))))
    return _insert(session, templates, clock.settings, [d for k, d in drafts.items() if k not in done], clock.now)


def _missed_followups(session: Session, clock: Clock, templates: Templates) -> int:
    """"We missed you": ``missed_after_days`` after a dose that is still not given."""
    if not clock.after_send_time:
        return 0
    today = clock.today
    day = today - timedelta(days=clock.settings.clinic.missed_after_days)
    claimed = claim(session, MISSED_MARK, ["dose"], col(Event.due) == day)
    query = (
        select_columns(*_TO_PATIENT)
        .join(Patient, col(Patient.id) == col(Event.patient_id))
        .where(col(Event.status) == "planned", col(Event.kind) == "dose", col(Event.due) == day,
               *_reachable(), _not_told(MISSED))
    )
    clinic = _clinic(clock.settings)
    not_after = clock.start_of(today + timedelta(days=1))

    def drafts(rows: Sequence[Any]) -> list[_Draft]:
        return [
            _Draft(dedupe_key=_dose_key(MISSED, event_id, due, email), kind=MISSED, recipient=email,
                   patient_id=patient_id, event_id=event_id, event_due=due, not_after=not_after,
                   context={"clinic": clinic, "patient": {"name": name}, "due": due})
            for event_id, due, patient_id, name, email in rows
        ]

    return _queue_claimed(session, claimed, query, drafts, clock, templates)


def notice_stale_reason(row: Outbox, event: Event | None, patient: Patient | None) -> str | None:
    """Why a ``changed`` or ``missed`` message queued earlier is no longer true, if it is not.

    A cancellation is sent after a discharge (it is what the patient must hear);
    a move or a follow-up is not, and neither is one the plan has since overtaken.
    """
    if patient is not None and (patient.opted_out or not patient.email):
        return "the patient opted out"
    if row.kind == CHANGED and row.event_due is None:
        if event is not None and event.status == "planned":
            return "the event is planned again"
        return None
    if patient is not None and patient.status != "active":
        return "the patient was discharged"
    if event is None or event.status != "planned":
        return "the event is done or cancelled"
    if event.due != row.event_due:
        return "the event moved"
    return None


# -- the days a downtime passed over --------------------------------------------------


def skip_passed_moments(engine: Engine, settings: Settings, now: datetime) -> int:
    """Record as skipped the patient messages whose day passed with no pass at or after
    its ``send_time`` (the scheduler was down); returns how many.

    ``pass_mark`` keeps the last day whose patient messages were decided. The first
    pass on a database only sets it. The rows keep their once-only keys, so
    nothing is queued for them later, and the next digest lists them.
    """
    clock = Clock(now, settings)
    covered = clock.today if clock.after_send_time else clock.today - timedelta(days=1)
    with transaction(engine) as session:
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        created = session.connection().execute(
            insert(PassMark).values(name=PATIENT_MESSAGES_MARK, day=covered, at=now)
            .on_conflict_do_nothing(index_elements=["name"]).returning(col(PassMark.name))
        ).first()
        if created is not None:
            return 0
        query = select(PassMark).where(PassMark.name == PATIENT_MESSAGES_MARK)
        if engine.dialect.name == "postgresql":
            query = query.with_for_update()
        mark = session.exec(query).one()
        if covered <= mark.day:
            return 0
        first = max(mark.day + timedelta(days=1), clock.today - timedelta(days=DOWNTIME_LOOKBACK_DAYS))
        last = clock.today - timedelta(days=1)
        skipped = _record_skipped(session, clock, first, last) if first <= last else 0
        mark.day, mark.at = covered, now
        session.add(mark)
    if skipped:
        log.warning("%d patient messages were not sent: no pass ran on their day", skipped)
    return skipped


def _record_skipped(session: Session, clock: Clock, first: date, last: date) -> int:
    """The reminders and follow-ups whose day fell in ``first`` .. ``last``."""
    drafts: list[_Draft] = []
    missed_after = timedelta(days=clock.settings.clinic.missed_after_days)
    base = (select(Event, Patient).join(Patient, col(Patient.id) == col(Event.patient_id))
            .where(*_reachable()))
    doses = list(session.exec(base.where(
        col(Event.kind) == "dose", col(Event.status).in_(["planned", "done"]),
        col(Event.due) >= first + timedelta(days=1), col(Event.due) <= last + timedelta(days=1))))
    quiet = _not_first_of_week(session, doses)
    for event, patient in doses:
        day = clock.reminder_day("dose", event.due, event.due_set_at)
        if day is not None and first <= day <= last and event.id not in quiet:
            assert patient.email is not None
            drafts.append(_skipped(DOSE_REMINDER, _dose_key(DOSE_REMINDER, event.id, event.due, patient.email),
                                   event, patient))
    labs = session.exec(base.where(
        col(Event.kind) == "lab", col(Event.status).in_(["planned", "done"]),
        col(Event.due) >= first - timedelta(days=LAB_LATE_REMINDER_DAYS),
        col(Event.due) <= last + timedelta(days=LAB_REMINDER_DAYS)))
    for event, patient in labs:
        day = clock.reminder_day("lab", event.due, event.due_set_at)
        if day is not None and first <= day <= last:
            assert patient.email is not None
            drafts.append(_skipped(LAB_REMINDER, _lab_key(patient.id, event.due, day, patient.email), event, patient))
    missed = session.exec(base.where(
        col(Event.kind) == "dose", col(Event.status) == "planned",
        col(Event.due) >= first - missed_after, col(Event.due) <= last - missed_after))
    for event, patient in missed:
        assert patient.email is not None
        drafts.append(_skipped(MISSED, _dose_key(MISSED, event.id, event.due, patient.email), event, patient))
    unique = list({d.dedupe_key: d for d in drafts}.values())
    total = 0
    for start in range(0, len(unique), QUEUE_BATCH):
        total += _insert_skipped(session, clock, unique[start:start + QUEUE_BATCH])
    return total


def _not_first_of_week(session: Session, doses: list[tuple[Event, Patient]]) -> set[int | None]:
    """The loading doses of ``first-of-week`` patients that another comes before in its week."""
    chosen = [(e, p) for e, p in doses if p.loading_reminders == FIRST_OF_WEEK and e.phase == "loading"]
    if not chosen:
        return set()
    earliest = _week_start(min(e.due for e, _ in chosen))
    by_patient: dict[int, list[date]] = {}
    for chunk in chunked(sorted({p.id for _, p in chosen if p.id is not None})):
        for pid, due in session.exec(
            select(col(Event.patient_id), col(Event.due))
            .where(col(Event.patient_id).in_(chunk), col(Event.kind) == "dose", col(Event.phase) == "loading",
                   col(Event.status).in_(["planned", "done"]), col(Event.due) >= earliest)
        ):
            by_patient.setdefault(pid, []).append(due)
    return {e.id for e, p in chosen
            if any(_week_start(e.due) <= d < e.due for d in by_patient.get(p.id or 0, []))}


def _skipped(kind: str, key: str, event: Event, patient: Patient) -> _Draft:
    assert patient.email is not None
    return _Draft(dedupe_key=key, kind=kind, recipient=patient.email, patient_id=patient.id,
                  event_id=event.id, event_due=event.due, context={})


def _insert_skipped(session: Session, clock: Clock, drafts: Sequence[_Draft]) -> int:
    """Rows that keep the once-only key of a message never sent: no body, status skipped."""
    rows = [{
        "dedupe_key": d.dedupe_key, "kind": d.kind, "recipient": d.recipient, "patient_id": d.patient_id,
        "event_id": d.event_id, "event_due": d.event_due,
        "message_id": make_message_id(d.dedupe_key, _domain(clock.settings)),
        "subject": f"{d.kind} for {d.event_due.isoformat() if d.event_due else ''}",
        "body_text": "", "body_html": "", "status": "skipped", "attempts": 0,
        "next_attempt_at": clock.now, "not_after": None, "last_error": SKIPPED_WHILE_DOWN,
        "reported": False, "created_at": clock.now,
    } for d in drafts]
    if not rows:
        return 0
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(Outbox).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(col(Outbox.id))
    return len(session.connection().execute(stmt, rows).all())


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


# What ``_event_item`` reads of an event and of its patient, as one plain row (no ORM
# object a row): ``id`` is the patient's, ``event_id`` the event's.
_ITEM_COLUMNS: tuple[Any, ...] = (
    col(Event.id).label("event_id"), col(Event.kind), col(Event.phase), col(Event.label), col(Event.seq),
    col(Event.due), col(Event.because), col(Event.tests), col(Event.key), col(Event.patient_id),
    col(Patient.id), col(Patient.mrn), col(Patient.name), col(Patient.neuro))


def _event_item(event: Event | Any, patient: Patient | Any, platelets: dict[int, float],
                drugs: dict[tuple[int, int], tuple[str, str]] | None = None) -> dict[str, Any]:
    drug, amount = drug_of(event, drugs or {})
    return {
        "mrn": patient.mrn, "name": patient.name, "kind": event.kind, "phase": event.phase,
        "label": event.label, "seq": event.seq, "due": event.due, "because": event.because,
        "tests": event.tests.split() if event.tests else [],
        "drug": drug, "amount": amount,  # a dose's drug and amount: "hydroxocobalamin", "1 mg"
        "platelets": platelets.get(patient.id or 0), "neuro": patient.neuro,
    }


def _queue_claimed(session: Session, claimed: Sequence[int], query: Any,
                   make_drafts: Callable[[Sequence[Any]], list[_Draft]], clock: Clock, templates: Templates) -> int:
    """Queue what ``query`` finds among the events this pass just claimed (``claimed``, in
    due-date order): each claimed event read once, by id, ``CLAIMED_READ`` at a time (plain
    rows, no ORM objects); then, ``QUEUE_BATCH`` candidates at a time, the drafts made
    (with what they share read once for the batch), rendered, and written by one
    executemany."""
    conn = session.connection()
    total = 0
    for chunk in chunked(claimed, CLAIMED_READ):
        rows = conn.execute(query.where(col(Event.id).in_(chunk)).order_by(col(Event.due), col(Event.id))).all()
        for start in range(0, len(rows), QUEUE_BATCH):
            total += _insert(session, templates, clock.settings, make_drafts(rows[start:start + QUEUE_BATCH]),
                             clock.now)
    return total


def _overdue_notices(session: Session, clock: Clock, templates: Templates) -> int:
    today = clock.today
    latest = today - timedelta(days=1 if clock.after_send_time else 2)
    earliest = today - timedelta(days=clock.settings.scheduler.overdue_catch_up_days)
    recipient = clock.settings.clinic.email
    claimed = claim(session, OVERDUE_MARK, EVENT_KINDS, col(Event.due) >= earliest, col(Event.due) <= latest)
    query: Any = (
        select_columns(*_ITEM_COLUMNS)
        .join(Patient, col(Patient.id) == col(Event.patient_id))
        .where(col(Event.status) == "planned", col(Event.due) >= earliest, col(Event.due) <= latest,
               col(Patient.status) == "active", _not_queued(OVERDUE, recipient))
    )
    clinic = _clinic(clock.settings)
    to = recipient.lower()

    def drafts(rows: Sequence[Any]) -> list[_Draft]:
        pids = sorted({row.id for row in rows})
        platelets = _latest_platelets(session, pids)
        drugs = regimen_drugs(session, pids)
        return [
            _Draft(
                dedupe_key=f"{OVERDUE}:{row.event_id}:{to}", kind=OVERDUE,
                recipient=recipient, patient_id=row.id, event_id=row.event_id, event_due=row.due,
                context={
                    "clinic": clinic, "today": today,
                    "patient": {"mrn": row.mrn, "name": row.name, "neuro": row.neuro,
                                "platelets": platelets.get(row.id)},
                    "event": _event_item(row, row, platelets, drugs),
                },
            )
            for row in rows
        ]

    return _queue_claimed(session, claimed, query, drafts, clock, templates)


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
        # The open events' index (ix_event_planned_due, whose WHERE the literal PLANNED says)
        # holds status, due and patient_id: the count reads it alone, no event row.
        where = (col(Event.status) == PLANNED, window, col(Patient.status) == "active")
        totals[name] = session.exec(select(func.count()).select_from(Event)
                                    .join(Patient, col(Patient.id) == col(Event.patient_id)).where(*where)).one()
        rows = session.connection().execute(
            select_columns(*_ITEM_COLUMNS).join(Patient, col(Patient.id) == col(Event.patient_id)).where(*where)
            .order_by(col(Event.due), col(Patient.mrn), col(Event.id)).limit(DIGEST_SECTION_LIMIT)).all()
        ids = sorted({row.id for row in rows})
        platelets = _latest_platelets(session, ids)
        drugs = regimen_drugs(session, ids)
        items = [_event_item(row, row, platelets, drugs) for row in rows]
        for item in items:
            item["overdue"] = item["due"] < today
        # A patient's overdue events of one kind are one line: "3 maintenance doses overdue since ..."
        sections[name] = group_overdue(items)
    to_telephone, totals["to_telephone"] = _to_telephone(session, clock)
    not_sent, totals["not_sent"] = _not_sent(session)
    failed_rows = list(session.exec(
        select(Outbox).where(Outbox.status == "failed", col(Outbox.reported).is_(False))
        .order_by(col(Outbox.id)).limit(500)
    ))
    alerts = [
        {**a, "since": date.fromisoformat(a["since"]) if isinstance(a["since"], str) else a["since"]}
        for a in list_open_alerts(session, limit=DIGEST_SECTION_LIMIT)
    ]
    totals["alerts"] = open_alert_count(session) if len(alerts) == DIGEST_SECTION_LIMIT else len(alerts)
    context = {
        "clinic": _clinic(settings), "today": today,
        **sections,
        "totals": totals,
        "to_telephone": to_telephone,
        "not_sent": not_sent,
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
    if queued:  # every skipped row is now reported (listed, or skipped for a reason no one acts on)
        session.execute(update(Outbox).where(col(Outbox.status) == "skipped", col(Outbox.reported).is_(False))
                        .values(reported=True))
    return queued


def _to_telephone(session: Session, clock: Clock) -> tuple[list[dict[str, Any]], int]:
    """Patients to call: overdue by ``telephone_overdue_days`` or more, and patients no
    email reaches (none recorded, or opted out) with something due within
    ``telephone_ahead_days``. One line per patient, oldest first."""
    clinic = clock.settings.clinic
    today = clock.today
    # Each reason is the open events in a window (ix_event_planned_due), grouped by patient
    # before the patients are read: grouped by patient.id, SQLite (with statistics) walked
    # every patient and every event of each (15 s at 200,000 patients).
    active = col(Patient.status) == "active"
    late = (col(Event.due) <= today - timedelta(days=clinic.telephone_overdue_days),)
    soon = (col(Event.due) >= today, col(Event.due) <= today + timedelta(days=clinic.telephone_ahead_days))
    reasons = (("late", late, (active,)),
               ("unreachable", soon, (active, or_(col(Patient.email).is_(None), col(Patient.opted_out).is_(True)))))
    whom = union(*(select(col(Event.patient_id)).join(Patient, col(Patient.id) == col(Event.patient_id))
                   .where(col(Event.status) == PLANNED, *window, *who) for _, window, who in reasons))
    total = session.exec(select(func.count()).select_from(whom.subquery())).one()
    lines: dict[int, dict[str, Any]] = {}
    for why, window, who in reasons:
        per_patient = (
            select(col(Event.patient_id).label("patient_id"), func.min(col(Event.due)).label("since"),
                   func.count().label("events"))
            .where(col(Event.status) == PLANNED, *window).group_by(col(Event.patient_id)).subquery()
        )
        rows = session.exec(
            select(Patient, per_patient.c.since, per_patient.c.events)
            .join(per_patient, per_patient.c.patient_id == col(Patient.id))
            .where(*who)
            .order_by(per_patient.c.since, col(Patient.mrn))
            .limit(DIGEST_SECTION_LIMIT)
        )
        for patient, since, count in rows:
            line = lines.setdefault(patient.id or 0, {"mrn": patient.mrn, "name": patient.name,
                                                      "phone": patient.phone, "reasons": []})
            if why == "late":
                days = (today - since).days
                line["reasons"].append(f"overdue since {since.isoformat()} ({days} days)"
                                       + (f", {count} events" if count > 1 else ""))
            else:
                channel = "opted out of messages" if patient.email else "no email address"
                line["reasons"].append(f"{channel}; due {since.isoformat()}")
    return list(lines.values())[:DIGEST_SECTION_LIMIT], int(total)


def _not_sent(session: Session) -> tuple[list[dict[str, Any]], int]:
    """Patient messages skipped because their moment passed, not yet in a digest."""
    where = (col(Outbox.status) == "skipped", col(Outbox.reported).is_(False),
             col(Outbox.kind).in_(list(PATIENT_KINDS)), col(Outbox.last_error).like(MOMENT_PASSED))
    total = session.exec(select(func.count()).select_from(Outbox).where(*where)).one()
    rows = session.exec(
        select(Outbox, Patient).join(Patient, col(Patient.id) == col(Outbox.patient_id))
        .where(*where).order_by(col(Patient.mrn), col(Outbox.id)).limit(DIGEST_SECTION_LIMIT)
    )
    return [{"kind": o.kind, "mrn": p.mrn, "name": p.name, "phone": p.phone, "due": o.event_due}
            for o, p in rows], int(total)


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
        lambda s: _changed_notices(s, clock, templates),
        lambda s: _missed_followups(s, clock, templates),
        lambda s: _overdue_notices(s, clock, templates),
        lambda s: _digest(s, clock, templates),
    ):
        try:
            with transaction(engine) as session:
                total += step(session)
        except Exception as exc:
            log.error("queueing failed (%s); the other kinds go on", type(exc).__name__)
            failure = failure or exc
    refresh_statistics(engine, ["outbox"], total)  # the senders' claims: planned for the queue as it now is
    if failure is not None:
        raise failure
    return total


# -- delivery ------------------------------------------------------------------------


# The server back-off's ceiling: while the server is down, a sender tries it again
# at most this long after the last failure (docs/faults.md).
SERVER_PROBE_CEILING = timedelta(minutes=5)


@dataclass
class Delivery:
    sent: int = 0
    skipped: int = 0
    retried: int = 0
    failed: int = 0
    server_down: bool = False  # the mail server could not be reached (or is in its back-off)


def backoff(settings: Settings, attempts: int) -> timedelta:
    """A message's own back-off after a 4xx answer to it: base * 2**(attempts - 1),
    capped at a day."""
    delay = timedelta(seconds=settings.scheduler.retry_base_seconds * 2 ** max(attempts - 1, 0))
    return min(delay, MAX_BACKOFF)


def server_backoff(settings: Settings, failures: int) -> timedelta:
    """How long senders leave the server alone after ``failures`` connection-level
    failures in a row: base * 2**(failures - 1), capped at ``SERVER_PROBE_CEILING``."""
    seconds = settings.scheduler.retry_base_seconds * 2 ** min(max(failures - 1, 0), 20)
    return min(timedelta(seconds=seconds), SERVER_PROBE_CEILING)


def server_name(settings: Settings) -> str:
    """The key of the mail server's row in ``mail_server``."""
    smtp = settings.smtp
    return (f"smtp:{smtp.host}:{smtp.port}" if smtp.host else "outbox-folder")[:64]


def _server_state(engine: Engine, name: str) -> MailServer | None:
    with transaction(engine) as session:
        return session.get(MailServer, name)


def _server_down(engine: Engine, settings: Settings, name: str, now: datetime, error: Exception) -> datetime:
    """Count one connection-level failure; returns when the server is tried next."""
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    with transaction(engine) as session:
        session.execute(insert(MailServer).values(name=name, failures=0)
                        .on_conflict_do_nothing(index_elements=["name"]))
        query = select(MailServer).where(MailServer.name == name)
        if engine.dialect.name == "postgresql":
            query = query.with_for_update()
        state = session.exec(query).one()
        state.failures += 1
        state.down_since = state.down_since or now
        state.next_probe_at = now + server_backoff(settings, state.failures)
        state.last_error = str(error)[:400]
        session.add(state)
        return state.next_probe_at


def _server_up(engine: Engine, name: str) -> None:
    with transaction(engine) as session:
        session.execute(
            update(MailServer).where(col(MailServer.name) == name, col(MailServer.failures) > 0)
            .values(failures=0, down_since=None, next_probe_at=None, last_error=None)
        )


def _run_out(now: datetime) -> Any:
    """Rows a sender claimed whose lease ran out (a dead sender's)."""
    return and_(col(Outbox.status) == "sending", col(Outbox.claimed_until) < now)


def _queued_due(now: datetime) -> Any:
    return and_(col(Outbox.status) == "queued", col(Outbox.next_attempt_at) <= now)


def _claim(engine: Engine, settings: Settings, now: datetime, token: str, lease_until: datetime, *,
           take_over: bool = True) -> list[Outbox]:
    """Claim up to a batch of sendable rows with one conditional UPDATE: a lease
    until ``lease_until``, which the sender renews while it works. ``take_over``: the
    rows whose lease had run out by the pass's ``now`` first. A sender looks for them
    on its first claim, once every ``claim_seconds`` after, and whenever nothing queued
    is left, not on every batch: after a heavy morning PostgreSQL reads the dead index
    entries of every row that passed through "sending" to find none."""
    arms = [_run_out(now), _queued_due(now)] if take_over else [_queued_due(now)]
    with transaction(engine) as session:
        # Each status on its own, in the order of ``ix_outbox_status_next_attempt_at_id``
        # (oldest due first), so a claim of queued rows reads about a batch of that index
        # however many are queued: one statement for both statuses, sorted by id, read and
        # sorted every row ready (190 ms a batch with 133,000 queued at a million
        # patients). An order the primary key cannot give, so no planner walks it from the
        # first message ever sent. Run-out leases first: a dead sender's rows, a few.
        ids: list[int] = []
        for ready_of_status in arms:
            pick = (select(Outbox.id).where(ready_of_status)
                    .order_by(col(Outbox.next_attempt_at), col(Outbox.id))
                    .limit(settings.scheduler.batch_size - len(ids)))
            if engine.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            ids += [i for i in session.exec(pick) if i is not None]
            if len(ids) == settings.scheduler.batch_size:
                break
        if not ids:
            return []
        session.execute(
            update(Outbox)
            .where(col(Outbox.id).in_(ids), or_(*arms))
            .values(status="sending", claimed_by=token, claimed_until=lease_until)
        )
        # By id: the claimed rows, not every row in "sending" (nor its index's dead entries).
        return list(session.exec(
            select(Outbox).where(col(Outbox.id).in_(ids), Outbox.claimed_by == token, Outbox.status == "sending")
            .order_by(col(Outbox.id))
        ))


class _Lease:
    """Renews a sender's claims while it works, from a thread of its own, so a
    send that blocks (a slow server, a timeout) never lets the lease lapse; a
    dead sender stops renewing and its rows are taken over when the lease ends.

    The lease is measured from the pass's ``now`` plus the real time elapsed since
    the pass began (``time.monotonic``): the clock is still read once."""

    def __init__(self, engine: Engine, settings: Settings, now: datetime, token: str) -> None:
        self.engine = engine
        self.now = now
        self.token = token
        self.seconds = settings.scheduler.claim_seconds
        self.started = monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def until(self) -> datetime:
        return self.now + timedelta(seconds=monotonic() - self.started + self.seconds)

    def __enter__(self) -> _Lease:
        self._thread = threading.Thread(target=self._renew, name="cobalt-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                with transaction(self.engine) as session:
                    session.execute(
                        update(Outbox)
                        .where(col(Outbox.claimed_by) == self.token, col(Outbox.status) == "sending")
                        .values(claimed_until=self.until())
                    )
            except Exception as exc:  # the next renewal tries again; the lease may lapse
                log.warning("could not renew the outbox lease (%s)", type(exc).__name__)


def _stale_reason(row: Outbox, now: datetime, events: dict[int, Event],
                  patients: dict[int, Patient]) -> str | None:
    if row.not_after is not None and now >= row.not_after:
        return "its time has passed"
    patient = patients.get(row.patient_id) if row.patient_id else None
    if row.kind in (CHANGED, MISSED):
        return notice_stale_reason(row, events.get(row.event_id) if row.event_id else None, patient)
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


def _finish_all(engine: Engine, outcomes: Sequence[tuple[Outbox, dict[str, Any]]], token: str, *,
                durable: bool = True) -> None:
    """Record what became of each row, in one transaction: one UPDATE for the rows
    whose outcome is the same (a batch's sent rows), so a batch is finished in one
    statement. ``durable=False``: a commit that survives this process being killed,
    not a power cut; see ``_sender``."""
    if not outcomes:
        return
    alike: dict[tuple[tuple[str, Any], ...], list[int]] = {}
    for row, values in outcomes:
        alike.setdefault(tuple(sorted(values.items())), []).append(row.id or 0)
    table: Any = Outbox.__table__  # type: ignore[attr-defined]  # Core: no ORM bookkeeping a message
    with transaction(engine, durable=durable) as session:
        connection = session.connection()
        for same, ids in alike.items():
            connection.execute(
                table.update()
                .where(table.c.id.in_(ids), table.c.claimed_by == token, table.c.status == "sending")
                .values(claimed_by=None, claimed_until=None, **dict(same))
            )


def _release(engine: Engine, rows: Sequence[Outbox], token: str) -> int:
    """Give rows back untouched (the server is down): their attempts and their
    next attempt stay as they were, so they go out as soon as the server answers."""
    with transaction(engine) as session:
        result = session.execute(
            update(Outbox)
            .where(col(Outbox.id).in_([r.id for r in rows]), col(Outbox.claimed_by) == token,
                   col(Outbox.status) == "sending")
            .values(status="queued", claimed_by=None, claimed_until=None)
        )
    return int(getattr(result, "rowcount", 0) or 0)


def _as_message(row: Outbox, calendar: str | None = None) -> Message:
    return Message(kind=row.kind, to=row.recipient, subject=row.subject, text=row.body_text,
                   html=row.body_html, message_id=row.message_id, calendar=calendar)


def _deliver_one(settings: Settings, now: datetime, sender: Any, row: Outbox, events: dict[int, Event],
                 patients: dict[int, Patient], report: Delivery,
                 calendar: str | None = None) -> tuple[dict[str, Any], bool]:
    """Send one row; returns the values that record what became of it, and whether the
    server answered. ``ServerUnavailable`` goes up to the caller untouched."""
    reason = _stale_reason(row, now, events, patients)
    if reason:
        report.skipped += 1
        return {"status": "skipped", "last_error": f"not sent: {reason}"}, False
    attempts = row.attempts + 1
    try:
        sender.send(_as_message(row, calendar))
    except ServerUnavailable:
        raise
    except TemporarySendError as exc:  # this message's own 4xx answer
        log.warning("temporary failure sending outbox row %s (%s); retrying later", row.id, row.kind)
        if attempts >= settings.scheduler.max_attempts:
            report.failed += 1
            return {"status": "failed", "attempts": attempts, "last_error": str(exc)[:400]}, True
        report.retried += 1
        return {"status": "queued", "attempts": attempts, "next_attempt_at": now + backoff(settings, attempts),
                "last_error": str(exc)[:400]}, True
    except PermanentSendError as exc:
        report.failed += 1
        log.warning("permanent failure sending outbox row %s (%s)", row.id, row.kind)
        return {"status": "failed", "attempts": attempts, "last_error": str(exc)[:400]}, True
    report.sent += 1
    return {"status": "sent", "attempts": attempts, "sent_at": now, "last_error": None}, True


def _sender(engine: Engine, settings: Settings, now: datetime, mailer: Mailer, server: str,
            max_batches: int | None, report: Delivery, stop: threading.Event) -> bool:
    """One sender: claims a batch, sends it over one mail connection, and again, until
    nothing is left (or ``max_batches``); returns whether the server answered.

    Each message's outcome is recorded as soon as it is known, in a commit of its own
    that survives the process being killed but is not synced to the disk; the last one
    is recorded once the mail session has ended (the outbox folder's files synced), in a
    durable commit that makes the whole batch durable. A killed process repeats at most
    the message in flight; a power cut at most the last batch (docs/faults.md)."""
    token = uuid.uuid4().hex[:16]
    answered = False
    batches = 0
    repeatable = mailer.repeatable
    lease = _Lease(engine, settings, now, token)
    with lease:
        take_over_at = monotonic()  # when to look for run-out leases again
        while (max_batches is None or batches < max_batches) and not stop.is_set():
            batches += 1
            rows = []
            if monotonic() < take_over_at:
                rows = _claim(engine, settings, now, token, lease.until(), take_over=False)
            if not rows:  # time to look for run-out leases again, or nothing queued is left
                take_over_at = monotonic() + settings.scheduler.claim_seconds
                rows = _claim(engine, settings, now, token, lease.until(), take_over=True)
            if not rows:
                break
            with transaction(engine) as session:
                event_ids = [r.event_id for r in rows if r.event_id is not None]
                patient_ids = [r.patient_id for r in rows if r.patient_id is not None]
                events = {e.id: e for e in session.exec(select(Event).where(col(Event.id).in_(event_ids)))}
                patients = {p.id: p for p in session.exec(select(Patient).where(col(Patient.id).in_(patient_ids)))}
                calendars = reminder_calendars(session, settings, rows, events)  # the event, for the patient
            # Outcomes not yet recorded. A message that may reach its recipient twice has its
            # outcome recorded before the next send (not synced); the last one, and with a
            # repeatable mailer (the outbox folder) all of them, once the session has closed.
            pending: list[tuple[Outbox, dict[str, Any]]] = []
            down: tuple[int, ServerUnavailable] | None = None
            try:
                with mailer.session() as sender:
                    for index, row in enumerate(rows):
                        try:
                            values, ok = _deliver_one(
                                settings, now, sender, row, events, patients,  # type: ignore[arg-type]
                                report, calendars.get(row.id or 0))
                            answered = ok or answered
                        except ServerUnavailable as exc:
                            down = (index, exc)
                            break
                        except Exception as exc:  # this row alone: anything its message raised
                            values = {"status": "failed", "attempts": row.attempts + 1,
                                      "last_error": f"cannot be sent ({type(exc).__name__})"}
                            report.failed += 1
                            log.error("outbox row %s (%s) failed: %s", row.id, row.kind, type(exc).__name__)
                        if repeatable or index == len(rows) - 1:
                            pending.append((row, values))
                        else:
                            _finish_all(engine, [(row, values)], token, durable=False)
            except ServerUnavailable as exc:
                # The session's end failed (the outbox folder would not sync): what it wrote may
                # not be on the disk, so its rows go back to the queue untouched.
                unsafe = sum(1 for _, values in pending if values["status"] == "sent")
                _finish_all(engine, [(r, v) for r, v in pending if v["status"] != "sent"], token)
                report.sent -= unsafe
                report.retried += _release(engine, rows, token)
                _stop_for(engine, settings, server, now, exc, report, stop, unsafe)
                break
            _finish_all(engine, pending, token)  # durable, and so is every outcome before it
            if down is not None:
                index, error = down
                report.retried += _release(engine, rows[index:], token)
                _stop_for(engine, settings, server, now, error, report, stop, len(rows) - index)
                break
    return answered


def _stop_for(engine: Engine, settings: Settings, server: str, now: datetime, exc: Exception,
              report: Delivery, stop: threading.Event, waiting: int) -> None:
    """The mail server (or the outbox folder) is unavailable: every sender stops."""
    retry_at = _server_down(engine, settings, server, now, exc)
    report.server_down = True
    stop.set()
    log.warning("the mail server is unavailable; %d messages wait, next try at %s",
                waiting, retry_at.isoformat())


def deliver(engine: Engine, settings: Settings, now: datetime, mailer: Mailer | None = None,
            max_batches: int | None = None) -> Delivery:
    """Send what is queued and due.

    Each row is on its own: whatever one message raises (building it, sending
    it, deciding it is stale) fails or retries that row alone, with its reason,
    and the batch goes on. A connection-level failure is the server's: the rows
    are given back untouched, the server is left alone for a back-off (at most
    ``SERVER_PROBE_CEILING``), and the first pass that reaches it again sends
    the whole queue that is still useful.
    """
    mailer = mailer or make_mailer(settings)
    report = Delivery()
    server = server_name(settings)
    state = _server_state(engine, server)
    if state is not None and state.next_probe_at is not None and now < state.next_probe_at:
        report.server_down = True
        return report
    senders = settings.scheduler.senders
    stop = threading.Event()  # the server is down: every sender stops after its row
    if senders == 1:
        answered = _sender(engine, settings, now, mailer, server, max_batches, report, stop)
    else:
        reports = [Delivery() for _ in range(senders)]
        outcome = [False] * senders
        failures: list[BaseException] = []

        def run(n: int) -> None:
            try:
                outcome[n] = _sender(engine, settings, now, mailer, server, max_batches, reports[n], stop)
            except BaseException as exc:  # raised again below, in the caller's thread
                failures.append(exc)
                stop.set()

        threads = [threading.Thread(target=run, args=(n,), name=f"cobalt-sender-{n}") for n in range(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for one in reports:
            report.sent += one.sent
            report.skipped += one.skipped
            report.retried += one.retried
            report.failed += one.failed
            report.server_down = report.server_down or one.server_down
        if failures:
            raise failures[0]
        answered = any(outcome)
    if answered and state is not None and state.failures > 0:
        _server_up(engine, server)
    return report


def purge_old_bodies(session: Session, settings: Settings, now: datetime) -> int:
    """Clear the bodies of messages sent (or skipped, or failed and reported) more
    than ``outbox_keep_days`` ago. The rows stay: they are what makes a message
    once-only. Runs once a day, with the digest (whose unique key makes sure one
    process does it).

    Reads ``ix_outbox_created_at_body_kept``, the rows whose body is still kept: its
    WHERE is said with the literal ``''`` (a partial index serves only a query that says
    its term), and a cleared row leaves it, so the cost follows the bodies left to clear.
    The status is tested on ``coalesce(status, '')`` (status is never null), which no
    index holds: on the bare column SQLite read every finished row through the status
    indexes (without statistics it rates an equality above any range)."""
    status = func.coalesce(col(Outbox.status), "")
    done = or_(status.in_(["sent", "skipped"]), and_(status == "failed", col(Outbox.reported).is_(True)))
    result = session.execute(
        update(Outbox)
        .where(col(Outbox.body_text) != literal_column("''"),
               col(Outbox.created_at) < now - timedelta(days=settings.scheduler.outbox_keep_days), done)
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
