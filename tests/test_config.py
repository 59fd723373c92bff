"""Configuration: declared, typed and range-checked in one place. Every bad
value is refused at start, with exit status 2 and one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Clinic

from scheduler.config import ClinicSettings, Settings, load_settings

BAD = [
    # (cobalt.toml after the database_url line, what the one line must name)
    ("clinic = 'oops'", "clinic"),
    ("smtp = [1, 2]", "smtp"),
    ("scheduler = 5", "scheduler"),
    ("alerts = 'none'", "alerts"),
    ("colour = 'blue'", "colour"),
    ("[clinic]\ncolour = 'blue'", "colour"),
    ("[clinic]\nname = ''", "[clinic] name"),
    ("[clinic]\nname = \"B12\\u0000clinic\"", "[clinic] name"),
    ("[clinic]\nname = \"B12\\u0007clinic\"", "[clinic] name"),
    ("[clinic]\nname = \"B12\\nclinic\"", "[clinic] name"),
    ("[clinic]\nname = 42", "[clinic] name"),
    ("[clinic]\ntimezone = 'Mars/Olympus_Mons'", "[clinic] timezone"),
    ("[clinic]\nopen_days = ['mon', 'funday']", "funday"),
    ("[clinic]\nopen_days = []", "open_days"),
    ("[clinic]\nholidays = 'ZZ'", "ZZ"),
    ("[clinic]\nemail = 'a@b.example,evil@x.example'", "[clinic] email"),
    ("[clinic]\nemail = \"a@b.example\\r\\nBcc: evil@x.example\"", "[clinic] email"),
    ("[clinic]\nsend_time = '25:00'", "[clinic] send_time"),
    ("[clinic]\nsend_time = '8am'", "[clinic] send_time"),
    ("[clinic]\nneuro_review_days = 3", "[clinic] neuro_review_days"),
    ("[smtp]\nport = 0", "[smtp] port"),
    ("[smtp]\nport = 70000", "[smtp] port"),
    ("[smtp]\nport = 'twenty-five'", "[smtp] port"),
    ("[smtp]\nstarttls = 'maybe'", "[smtp] starttls"),
    ("[smtp]\nsender = 'Clinic <clinic@x.example>'", "[smtp] sender"),
    ("[smtp]\nhost = \"smtp.example\\r\\nEVIL\"", "[smtp] host"),
    ("[smtp]\noutbox_dir = ''", "[smtp] outbox_dir"),
    ("[smtp]\ntimeout = -1", "[smtp] timeout"),
    ("[scheduler]\nmax_attempts = -1", "[scheduler] max_attempts"),
    ("[scheduler]\nmax_attempts = 0", "[scheduler] max_attempts"),
    ("[scheduler]\nretry_base_seconds = -60", "[scheduler] retry_base_seconds"),
    ("[scheduler]\noverdue_catch_up_days = -7", "[scheduler] overdue_catch_up_days"),
    ("[scheduler]\nmisfire_grace_seconds = -1", "[scheduler] misfire_grace_seconds"),
    ("[scheduler]\nreplan_batch = 0", "[scheduler] replan_batch"),
    ("[scheduler]\nreplan_per_pass = 0", "[scheduler] replan_per_pass"),
    ("[scheduler]\npass_every_seconds = 0", "[scheduler] pass_every_seconds"),
    ("[scheduler]\nbatch_size = 0", "[scheduler] batch_size"),
    ("[scheduler]\nclaim_seconds = 1", "[scheduler] claim_seconds"),
    ("[scheduler]\noutbox_keep_days = 0", "[scheduler] outbox_keep_days"),
    ("[scheduler]\nmax_attempts = 'ten'", "[scheduler] max_attempts"),
    ("[scheduler]\nmax_attempts = 2.5", "[scheduler] max_attempts"),
    ("[alerts]\nb12_borderline_low = -5", "b12_borderline_low"),
    ("[alerts]\nno_such_threshold = 1", "no_such_threshold"),
    ("base_dir = '/'", "base_dir"),
    ("templates_dir = \"a\\u0000b\"", "templates_dir"),
    ("[clinic\nname = 'x'", "cobalt.toml"),
]


@pytest.mark.parametrize(("toml", "key"), BAD, ids=[b[0].replace("\n", " ") for b in BAD])
def test_a_bad_setting_is_refused_at_start_in_one_line_naming_the_key(clinic: Clinic, toml: str, key: str) -> None:
    (clinic.path / "cobalt.toml").write_text(f'database_url = "{clinic.database_url}"\n{toml}\n')
    for result in (clinic.cobalt("due"), clinic.cobalt("tick", "--now", "2026-03-03T08:00")):
        assert result.code == 2, (result.code, result.err)
        assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err, result.err
        assert key in result.err, result.err
        assert result.out == ""


@pytest.mark.parametrize(("name", "value"), [
    ("COBALT_SMTP_PORT", "abc"), ("COBALT_CLINIC_EMAIL", "Evil <e@x.example>"), ("COBALT_SEND_TIME", "noon"),
    ("COBALT_CLINIC_NAME", "B12\x01clinic"), ("COBALT_CLINIC_TIMEZONE", "Nowhere/Land"),
])
def test_a_bad_environment_override_is_refused_naming_the_variable(clinic: Clinic, name: str, value: str) -> None:
    clinic.monkeypatch.setenv(name, value)
    result = clinic.cobalt("due")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1 and name in result.err, result.err


def test_the_environment_overrides_the_file_and_both_keep_their_types(tmp_path: Path) -> None:
    (tmp_path / "cobalt.toml").write_text('[clinic]\nname = "Riverside"\nopen_days = ["mon", "wed"]\n'
                                          '[smtp]\nport = 2525\nstarttls = true\n')
    settings = load_settings({"COBALT_SMTP_PORT": "587", "COBALT_CLINIC_TIMEZONE": "Europe/Berlin",
                              "COBALT_CLINIC_EMAIL": "Nurses@Clinic.Example"}, cwd=tmp_path)
    assert settings.clinic.name == "Riverside" and settings.clinic.open_days == ("mon", "wed")
    assert settings.clinic.timezone == "Europe/Berlin" and str(settings.clinic.tz) == "Europe/Berlin"
    assert settings.clinic.email == "Nurses@clinic.example"
    assert settings.smtp.port == 587 and settings.smtp.starttls is True
    assert settings.base_dir == tmp_path and settings.outbox_path == tmp_path / "outbox"
    assert settings.clinic.calendar().is_open(__import__("datetime").date(2026, 3, 4))  # a Wednesday


def test_settings_built_in_code_read_neither_the_file_nor_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cobalt.toml").write_text('[clinic]\nname = "From the file"\n')
    monkeypatch.setenv("COBALT_CLINIC_NAME", "From the environment")
    assert Settings().clinic.name == "B12 clinic"
    assert Settings(clinic=ClinicSettings(name="Given")).clinic.name == "Given"
    assert load_settings().clinic.name == "From the environment"


def test_a_clinic_setting_is_one_declared_field() -> None:
    fields = ClinicSettings.model_fields
    assert {"name", "timezone", "open_days", "holidays", "email", "send_time", "neuro_review_days"} <= set(fields)
