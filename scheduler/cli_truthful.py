"""``cobalt reminders``: the reminders a patient receives (SPEC section 8; docs/messages.md).

Only the standard library is imported here; the command imports what it needs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scheduler.cli import App


def cmd_reminders(app: App) -> None:
    from scheduler import db, service
    from scheduler.store import get_patient

    mrn = app.args.mrn
    with db.transaction(app.engine) as session:
        changed = False
        if app.args.loading is not None:
            changed = service.set_loading_reminders(session, app.context(), mrn, app.args.loading)
        patient = get_patient(session, mrn)
        data = {"mrn": patient.mrn, "loading": patient.loading_reminders,
                "email": patient.email is not None, "opted_out": patient.opted_out, "changed": changed}
    words = {"every-dose": "every loading dose", "first-of-week": "the first loading dose of each week"}
    reach = ("no email address: the clinic telephones" if not data["email"]
             else "opted out: no messages" if data["opted_out"] else "by email")
    app.out(data, f"{mrn}: reminded of {words[str(data['loading'])]} ({reach})")


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("reminders", cmd_reminders, "show or choose the reminders a patient receives", mrn=True)
    p.add_argument("--loading", choices=("every-dose", "first-of-week"),
                   help="loading doses: every dose (the default) or the first of each week")
