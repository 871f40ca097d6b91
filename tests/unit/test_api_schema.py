"""The read API against its own OpenAPI document (schemathesis, in process through ASGI): for every
operation, requests generated from the schema (valid ones, and invalid ones) as the admin and as a
tenant, each answer checked by every schemathesis check — no 5xx, status codes and content types
documented, bodies valid against the response schemas, invalid input rejected with a 4xx, valid input
not rejected with a 400, the bearer scheme enforced. The same run against a live `leitstand run` on
the local cluster is in tests/e2e/test_api.py."""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from test_api import ADMIN, client_for, make_world
from test_api_auth import TENANT_A, tenants

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient (used by schemathesis' ASGI transport) asks for httpx2
    import schemathesis
    from schemathesis import GenerationMode

EXAMPLES = 40
NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


@pytest.fixture(scope="module")
def schema() -> Any:
    world = make_world(leading=True)
    with client_for(world, tenants()) as client:
        app = client.app
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return schemathesis.openapi.from_asgi("/openapi.json", app)


def query_types(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Path → query parameter → its JSON type ("string", "integer", "number")."""
    types: dict[str, dict[str, str]] = {}
    for path, item in doc["paths"].items():
        for param in item["get"].get("parameters", []):
            if param["in"] == "query":
                schema = param["schema"]
                options = [o for o in schema.get("anyOf", [schema]) if o.get("type") != "null"]
                types.setdefault(path, {})[param["name"]] = str(options[0].get("type", "string"))
    return types


def expressible(case: Any, types: dict[str, str]) -> bool:
    """Only invalid cases a URL can carry. A query string has no types: an empty list is no parameter
    at all, a one-element list is the plain value, the number 5 given to a string parameter is the
    string "5", and the string "300.0" given to an integer parameter is 300.0 (an integer to JSON
    Schema). Schemathesis would count the server's 200 as accepting invalid data it never received.
    (Lists of two or more are repeated parameters, which the API refuses.)"""
    for name, value in (case.query or {}).items():
        kind = types.get(name)
        if isinstance(value, list):
            if len([v for v in value if v is not None and not isinstance(v, list | dict)]) < 2:
                return False
        elif value is None or isinstance(value, dict):
            return False
        elif kind is None:
            continue  # an unknown parameter with a value: refused whatever the value
        elif isinstance(value, bool):
            return False
        elif isinstance(value, int | float):
            if kind == "string" or (isinstance(value, float) and value.is_integer()):
                return False
        elif kind in ("integer", "number") and NUMBER.fullmatch(str(value).strip()):
            return False
    return True


OPERATIONS = ("/healthz", "/readyz", "/v1/queues", "/v1/queues/{name}", "/v1/jobs", "/v1/jobs/{namespace}/{name}",
              "/v1/nodes", "/v1/topology", "/v1/decisions", "/v1/usage")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    with client_for(make_world()) as client:
        return dict(client.get("/openapi.json").json())


def test_every_path_of_the_document_is_tested(document: dict[str, Any]) -> None:
    assert tuple(document["paths"]) == OPERATIONS


@pytest.mark.parametrize("caller", [ADMIN, TENANT_A], ids=["admin", "tenant-a"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize("path", OPERATIONS)
def test_every_operation_keeps_to_its_schema(schema: Any, document: dict[str, Any], path: str, mode: GenerationMode,
                                             caller: dict[str, str]) -> None:
    [operation] = [r.ok() for r in schema.get_all_operations() if r.ok().path == path]
    label = operation.label

    types = query_types(document).get(path, {})
    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.NEGATIVE:
        strategy = strategy.filter(lambda case: expressible(case, types))

    @given(strategy)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            case.call_and_validate(headers=caller)

    try:
        check()
    except Unsatisfiable:
        if mode is GenerationMode.NEGATIVE:
            pytest.skip(f"{label} has no parameter to make invalid")
        raise
