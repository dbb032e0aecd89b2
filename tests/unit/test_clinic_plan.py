"""The daily clinic screening's settings: checked once at start-up, each error naming its
setting."""

from __future__ import annotations

from datetime import time

import pytest

from service.api.clinic import clinic_plan
from service.errors import ConfigError
from service.settings import Settings

TRIALS = ["relieve", "ssrs"]


def test_a_plan_reads_every_setting() -> None:
    plan = clinic_plan(
        Settings(
            clinic_schedule_time="17:30",
            clinic_timezone="Europe/Berlin",
            clinic_schedule_days_ahead=2,
            clinic_schedule_filters="practitioner=Practitioner/12; service-type=spine-oncology",
            clinic_schedule_trials="ssrs",
        ),
        TRIALS,
    )
    assert plan.at == time(17, 30) and plan.zone == "Europe/Berlin" and plan.days_ahead == 2
    assert plan.filters == (
        ("practitioner", "Practitioner/12"),
        ("service-type", "spine-oncology"),
    )
    assert plan.trials == ("ssrs",)
    unset = clinic_plan(Settings(), TRIALS)
    assert unset.at is None and unset.trials == ("relieve", "ssrs")


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("clinic_schedule_time", "5pm", "PRESCREEN_CLINIC_SCHEDULE_TIME"),
        ("clinic_schedule_time", "24:00", "PRESCREEN_CLINIC_SCHEDULE_TIME"),
        ("clinic_timezone", "Mars/Olympus", "PRESCREEN_CLINIC_TIMEZONE"),
        ("clinic_schedule_filters", "practitioner", "PRESCREEN_CLINIC_SCHEDULE_FILTERS"),
        ("clinic_schedule_trials", "relieve,nope", "PRESCREEN_CLINIC_SCHEDULE_TRIALS"),
    ],
)
def test_a_wrong_setting_stops_the_start_naming_it(setting: str, value: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        clinic_plan(Settings().model_copy(update={setting: value}), TRIALS)
