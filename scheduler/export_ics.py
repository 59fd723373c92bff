"""A patient's planned doses and labs as an iCalendar file (RFC 5545), with ``icalendar``.

read (the patient's planned events) -> map (one all-day VEVENT each) -> serialise.

- UID: ``cobalt-event-<event id>@<clinic domain>``: the same while the event
  exists (a moved dose keeps its id), so a calendar that imports the file again
  updates the event instead of adding a second one.
- SUMMARY in the patient's words: an injection or a blood test at the clinic.
  No diagnosis, no test names, no values; the drug and dose only while
  ``[clinic] calendar_drug_names`` is true.
- A VALARM at 09:00 the day before.

The same VEVENT goes with each patient dose and lab reminder as a text/calendar
attachment (``reminder_calendars``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from icalendar import Alarm, Calendar
from icalendar import Event as VEvent
from sqlmodel import Session, col, select

from models import Event, Regimen
from scheduler.config import Settings
from scheduler.protocols import get_protocol
from scheduler.store import get_patient, sorted_events

PRODID = "-//Cobalt//B12 clinic schedule//EN"
ALARM_BEFORE = timedelta(hours=15)  # before the day starts: 09:00 the day before
CALENDAR_KINDS = ("dose", "lab")


def clinic_domain(settings: Settings) -> str:
    return settings.clinic.email.rpartition("@")[2].strip().lower() or "cobalt.invalid"


def event_uid(event_id: int | None, settings: Settings) -> str:
    return f"cobalt-event-{event_id}@{clinic_domain(settings)}"


def _regimen_number(event: Event) -> int | None:
    head = event.key.split(":", 1)[0]
    return int(head[1:]) if head.startswith("r") and head[1:].isdigit() else None


def summary(event: Event, protocol: str | None, settings: Settings) -> str:
    """What the patient's calendar shows: no diagnosis, no tests, the drug only if the clinic allows."""
    clinic = settings.clinic.name
    if event.kind == "lab":
        return f"Blood test at {clinic}"
    drug = ""
    if settings.clinic.calendar_drug_names and protocol:
        p = get_protocol(protocol)
        drug = f" ({p.drug} {p.dose})"
    return f"Injection appointment at {clinic}{drug}"


def vevent(event: Event, protocol: str | None, settings: Settings) -> VEvent:
    clinic = settings.clinic
    what = summary(event, protocol, settings)
    item = VEvent()
    item.add("uid", event_uid(event.id, settings))
    item.add("dtstamp", event.updated_at)
    item.add("dtstart", event.due)
    item.add("dtend", event.due + timedelta(days=1))
    item.add("summary", what)
    item.add("location", clinic.name)
    item.add("description", f"{what}. If the day does not suit you, please write to {clinic.email} "
                            "and we will find you another time.")
    item.add("transp", "TRANSPARENT")
    alarm = Alarm()
    alarm.add("action", "DISPLAY")
    alarm.add("description", f"Tomorrow: {what}")
    alarm.add("trigger", -ALARM_BEFORE)
    item.add_component(alarm)
    return item


def calendar(events: Iterable[tuple[Event, str | None]], settings: Settings) -> Calendar:
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("x-wr-calname", settings.clinic.name)
    for event, protocol in events:
        cal.add_component(vevent(event, protocol, settings))
    return cal


def _protocols(regimens: Iterable[Regimen]) -> dict[tuple[int, int], str]:
    return {(r.patient_id, r.number): r.protocol for r in regimens}


def _protocol_of(event: Event, protocols: Mapping[tuple[int, int], str]) -> str | None:
    number = _regimen_number(event)
    return protocols.get((event.patient_id, number)) if number is not None else None


def patient_calendar(session: Session, settings: Settings, mrn: str) -> str:
    """The patient's planned doses and labs, as the text of an .ics file."""
    patient = get_patient(session, mrn)
    events = session.exec(
        select(Event).where(Event.patient_id == patient.id, Event.status == "planned",
                            col(Event.kind).in_(CALENDAR_KINDS))
    ).all()
    protocols = _protocols(session.exec(select(Regimen).where(Regimen.patient_id == patient.id)))
    cal = calendar(((e, _protocol_of(e, protocols)) for e in sorted_events(events)), settings)
    return cal.to_ical().decode("utf-8")


def reminder_calendars(session: Session, settings: Settings, rows: Sequence[Any],
                       events: Mapping[int | None, Event]) -> dict[int, str]:
    """For outbox rows of patient dose and lab reminders: the reminded event as an .ics
    attachment, by outbox row id (one query for the batch's regimens)."""
    wanted = [r for r in rows if r.kind in ("dose-reminder", "lab-reminder") and r.event_id in events]
    if not wanted:
        return {}
    patient_ids = {events[r.event_id].patient_id for r in wanted}
    protocols = _protocols(session.exec(select(Regimen).where(col(Regimen.patient_id).in_(patient_ids))))
    found = {}
    for row in wanted:
        event = events[row.event_id]
        cal = calendar([(event, _protocol_of(event, protocols))], settings)
        found[row.id] = cal.to_ical().decode("utf-8")
    return found
