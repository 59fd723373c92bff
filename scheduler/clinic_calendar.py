"""The clinic's calendar: which days it is open, the next open day, and how often
a clinician reviews open-ended loading (clinic policy)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING

from scheduler.errors import ConfigError

if TYPE_CHECKING:  # loaded only by a clinic that names its holidays: a slow import
    import holidays as holidays_lib

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_open_days(names: Iterable[str]) -> frozenset[int]:
    days = set()
    for name in names:
        key = str(name).strip().lower()[:3]
        if key not in WEEKDAYS:
            raise ConfigError(f"open_days: {name!r} is not a weekday (use mon, tue, ... sun)")
        days.add(WEEKDAYS.index(key))
    if not days:
        raise ConfigError("open_days: the clinic must be open on at least one weekday")
    return frozenset(days)


def load_holidays(spec: str) -> holidays_lib.HolidayBase | None:
    """``"GB-ENG"`` -> England's public holidays; ``""`` -> none."""
    spec = spec.strip()
    if not spec:
        return None
    import holidays as holidays_lib

    country, _, subdiv = spec.partition("-")
    try:
        return holidays_lib.country_holidays(country.upper(), subdiv=subdiv.upper() or None)
    except NotImplementedError:
        raise ConfigError(f"holidays: unknown country {country!r} in {spec!r}") from None
    except Exception as exc:  # the holidays package raises plain errors for subdivisions
        raise ConfigError(f"holidays: {spec!r} is not a known country or subdivision") from exc


# Clinic policy, not pharmacology: how often a clinician asks "is neurological
# improvement continuing?" while hydroxo-neuro loading is open ([clinic] neuro_review_days).
NEURO_REVIEW_EVERY_DAYS = 14


@dataclass(frozen=True)
class ClinicCalendar:
    open_weekdays: frozenset[int] = frozenset(range(5))
    holidays: holidays_lib.HolidayBase | None = field(default=None, compare=False)
    neuro_review_days: int = NEURO_REVIEW_EVERY_DAYS
    # next_open's answers, remembered (the calendar does not change once made)
    _next_open: dict[date, date] = field(default_factory=dict, init=False, compare=False, repr=False)

    def is_open(self, day: date) -> bool:
        if day.weekday() not in self.open_weekdays:
            return False
        return not (self.holidays is not None and day in self.holidays)

    def next_open(self, day: date) -> date:
        """``day`` itself when open, else the next open day."""
        found = self._next_open.get(day)
        if found is None:
            found = self._next_open[day] = self._search_open(day)
        return found

    def _search_open(self, day: date) -> date:
        for _ in range(366):
            if self.is_open(day):
                return day
            day += timedelta(days=1)
        raise ConfigError("the clinic calendar has no open day within a year")

    def closed_reason(self, day: date) -> str:
        if self.holidays is not None and day in self.holidays:
            return f"clinic closed for {self.holidays.get(day)}"
        return "clinic closed"
