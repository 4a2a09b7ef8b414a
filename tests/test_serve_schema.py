"""A bounded Schemathesis run against the app's own OpenAPI schema: requests generated from the schema
(valid and invalid bodies, uploads of random bytes) never get a 5xx, and every answer matches the schema
(its status code is documented, its body has the documented shape and content type)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from digitlab.serve import LOOPBACK_HOSTS
from digitlab.serve.app import create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@pytest.fixture(scope="module")
def api_schema(trained_model):
    app = create_app(trained_model, allowed_hosts=[*LOOPBACK_HOSTS, "testserver"])  # Schemathesis's client
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def operations(api_schema) -> dict:
    return {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in api_schema.get_all_operations())}


POST, NEG = GenerationMode.POSITIVE, GenerationMode.NEGATIVE  # GETs take no input, so nothing to break


@pytest.mark.parametrize("operation, mode", [("POST /api/predict", POST), ("POST /api/predict", NEG),
                                             ("POST /api/predict/batch", POST), ("POST /api/predict/batch", NEG),
                                             ("POST /api/read", POST), ("POST /api/read", NEG),
                                             ("POST /api/explain", POST), ("POST /api/explain", NEG),
                                             ("GET /api/model", POST), ("GET /api/health", POST)])
def test_api_matches_its_schema(api_schema, operation, mode):
    # (Schemathesis's own pytest fixture loader does not run under pytest 9, so the cases come from its
    # Hypothesis strategy.) Bounded: 15 cases an operation and mode (bodies that fit the schema, and
    # bodies that break it), derandomized so a failure repeats.
    ops = operations(api_schema)
    assert set(ops) == {"POST /api/predict", "POST /api/predict/batch", "POST /api/explain", "POST /api/read",
                        "GET /api/model", "GET /api/health"}

    @given(case=ops[operation].as_strategy(mode))
    @settings(max_examples=15, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    def check(case):
        case.call_and_validate(checks=CHECKS)

    check()
