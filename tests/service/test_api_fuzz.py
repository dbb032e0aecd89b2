"""The OpenAPI of the running service, fuzzed: generated requests, one operation at a time and as
stateful sequences following the schema's links (run → its progress and results, worklist → a
decision), authenticated with a key holding every scope. Whatever is sent, no answer is a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.stateful.state_machine import APIStateMachine

from tests.integration.servers import SekmetServer, free_port
from tests.service.conftest import Helpers, RunningService, running_service, service_settings

FUZZ_KEY = "fuzz-key-with-every-scope"
HEADERS = {"X-API-Key": FUZZ_KEY}
EXAMPLES = 30  # per operation: enough to reach odd corners, small enough for CI


@pytest.fixture(scope="module")
def fuzzed_service(
    sekmet: SekmetServer, helpers: Helpers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    port = free_port()
    folder = tmp_path_factory.mktemp("fuzz")
    base = service_settings(sekmet, helpers, f"sqlite:///{folder / 'state.db'}", port)
    keys = {
        "fuzz": {"key": FUZZ_KEY, "scopes": ["screen", "runs", "candidates", "decide", "notify"]}
    }
    with running_service(base.model_copy(update={"api_keys": json.dumps(keys)}), port) as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(fuzzed_service: RunningService) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed_service.url}/openapi.json")


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


def served_trial(case: Any) -> None:
    """Most generated bodies name a random trial and stop at 404; half of them name a served
    trial instead, so runs and screenings go deep (and the stateful links have a run to follow)."""
    body = case.body
    if isinstance(body, dict) and "trial" in body and hash(repr(body)) % 2 == 0:
        body["trial"] = "relieve"


def test_no_generated_request_gets_a_5xx(api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10, "the schema lost operations"
    for operation in operations:

        @given(case=operation.as_strategy())
        @FUZZ_SETTINGS
        def no_5xx(case: Any) -> None:
            served_trial(case)
            response = case.call(headers=HEADERS, timeout=120)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} answered {response.status_code}"
            )

        no_5xx()


def test_stateful_sequences_get_no_5xx(api_schema: Any, tmp_path: Path) -> None:
    machine = api_schema.as_state_machine()

    class Sequences(machine):  # type: ignore[misc,valid-type]
        def before_call(self, case: Any) -> None:
            served_trial(case)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": HEADERS, "timeout": 120}

        def validate_response(self, response: Any, case: Any, **_kwargs: Any) -> None:
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} answered {response.status_code}"
            )

    assert issubclass(Sequences, APIStateMachine)
    Sequences.run(
        settings=settings(
            max_examples=40,
            stateful_step_count=8,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
    )
