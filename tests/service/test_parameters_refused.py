"""The service screens with the protocol's parameters only: a request that tries to set them
(what ``prescreen screen --set`` does offline) is refused, never screened as if it had not."""

from __future__ import annotations

from tests.service.conftest import RunningService


def test_a_screening_or_run_with_parameters_is_refused(service: RunningService) -> None:
    with service.client() as client:
        for key in ("set", "parameters", "overrides"):
            answer = client.post(
                "/screenings",
                json={"trial": "relieve", "patients": ["p1"], key: {"nrs_threshold": 6}},
            )
            assert answer.status_code == 422, key
            assert "rule parameters cannot be set through the service" in answer.text
        run = client.post("/runs", json={"trial": "relieve", "params": {"min_survival_months": 2}})
        assert run.status_code == 422
        assert "rule parameters cannot be set through the service" in run.text
