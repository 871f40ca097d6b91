"""The generators of `leitstand bench hostile` (operator/hostile.py), without a cluster: malformed objects
come from the CRDs' own schemas (every spec field is attacked), carry exactly one violation, and the
judge of the API server's answer recognises a refusal that names the field."""

from __future__ import annotations

import copy
from typing import Any

from leitstand.operator.hostile import (
    DELETE,
    HOSTILE_KINDS,
    crd_schema,
    hostile,
    malformed,
    names_field,
    schema_violations,
)


def test_every_spec_field_of_both_crds_is_attacked() -> None:
    for crd in ("trainingjobs", "queues"):
        spec = crd_schema(crd)["properties"]["spec"]["properties"]
        attacked = {v.path[1] for v in schema_violations(crd_schema(crd), ())
                    if len(v.path) > 1 and v.path[0] == "spec"}
        assert set(spec) <= attacked, (crd, set(spec) - attacked)


def _get(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return DELETE
        node = node[key]
    return node


def test_each_malformed_object_carries_its_violation() -> None:
    for obj, violation in malformed(300, seed=3):
        expected = obj["metadata"]["name"] if violation.value == "@self" else violation.value
        assert _get(obj, violation.path) == expected if expected is not DELETE else _get(obj, violation.path) is DELETE


def test_the_malformed_stream_cycles_through_all_violations_of_both_kinds() -> None:
    objects = malformed(400, seed=1)
    kinds = {obj["kind"] for obj, _ in objects}
    assert kinds == {"TrainingJob", "Queue"}
    seen = {(obj["kind"], v.field, v.what) for obj, v in objects}
    assert len(seen) >= 60


def test_hostile_objects_are_what_their_kind_says() -> None:
    objects = hostile(130, seed=2)
    assert len(objects) == 130
    whats = {what for _, what in objects}
    assert set(HOSTILE_KINDS) <= whats
    assert any(w.startswith("queue-") for w in whats)
    for obj, what in objects:
        if what == "huge-gang":
            assert obj["spec"]["replicas"] <= 100_000  # the schema's maximum: beyond it, it is malformed
        if what == "long-name":
            assert len(obj["metadata"]["name"]) == 63
        if what == "tiny-fraction":
            assert "gpus" not in obj["spec"] and obj["spec"]["gpuFraction"] >= 0.001


def test_a_refusal_counts_only_when_it_names_the_field() -> None:
    reply: dict[str, Any] = {"message": 'TrainingJob.leitstand.dev "x" is invalid: spec.replicas: Invalid value: 0',
                             "details": {"causes": [{"field": "spec.replicas", "message": "should be >= 1"}]}}
    assert names_field(reply, "spec.replicas")
    assert not names_field(reply, "spec.gpus")
    strict = {"message": 'strict decoding error: unknown field "spec.surplusField"'}
    assert names_field(strict, "spec.surplusField")
    item = {"message": "x", "details": {"causes": [{"field": "spec.dataResidency[0]"}]}}
    assert names_field(item, "spec.dataResidency[0]")
    assert names_field(copy.deepcopy(item), "spec.dataResidency")
