"""Which nodes a pod template may run on: nodeSelector, required node affinity, taints and tolerations.

Called by `jobs` when it turns a TrainingJob (or a plain pod) into the core's `Job`: the answer is
the job's `allowed_nodes` (None when every node is allowed). The core never sees labels or taints;
it only gets the set. Sets are memoised per (constraints, node generation), so a thousand jobs with
the same template share one frozenset object (which the core's mask cache keys on).

The rules follow kube-scheduler's NodeAffinity and TaintToleration filters: every nodeSelector pair
must match; of `requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms` one term must match
(all expressions of a term); a `NoSchedule` or `NoExecute` taint must be tolerated
(`PreferNoSchedule` is a preference and ignored). Readiness and `spec.unschedulable` are not here:
they are the node's `schedulable` flag in the core.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from leitstand.operator.service.records import NodeRecord, Taint, freeze
from leitstand.scheduler.model import NodeName


class ConstraintError(ValueError):
    """A node selector or affinity term the scheduler cannot evaluate (names the field)."""


def _match_expression(expr: Mapping[str, Any], labels: Mapping[str, str], field: str) -> bool:
    key = expr.get("key", "")
    op = expr.get("operator", "")
    values = [str(v) for v in expr.get("values") or ()]
    has = key in labels
    if op == "In":
        return has and labels[key] in values
    if op == "NotIn":
        return not has or labels[key] not in values
    if op == "Exists":
        return has
    if op == "DoesNotExist":
        return not has
    if op in ("Gt", "Lt"):
        if not has or len(values) != 1:
            return False
        try:
            left, right = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return left > right if op == "Gt" else left < right
    raise ConstraintError(f"{field}: unknown operator {op!r}; use In, NotIn, Exists, DoesNotExist, Gt or Lt")


def _term_matches(term: Mapping[str, Any], node: NodeRecord, labels: Mapping[str, str], field: str) -> bool:
    exprs = term.get("matchExpressions") or ()
    fields = term.get("matchFields") or ()
    if not exprs and not fields:
        return False  # an empty term matches nothing (kube-scheduler's rule)
    for i, expr in enumerate(exprs):
        if not _match_expression(expr, labels, f"{field}.matchExpressions[{i}]"):
            return False
    for i, expr in enumerate(fields):
        if expr.get("key") != "metadata.name":
            raise ConstraintError(f"{field}.matchFields[{i}]: only metadata.name is supported")
        if not _match_expression(expr, {"metadata.name": node.name}, f"{field}.matchFields[{i}]"):
            return False
    return True


def tolerates(taint: Taint, tolerations: Iterable[Mapping[str, Any]]) -> bool:
    for tol in tolerations:
        effect = tol.get("effect") or ""
        if effect and effect != taint.effect:
            continue
        key = tol.get("key") or ""
        op = tol.get("operator") or "Equal"
        if op == "Exists":
            if not key or key == taint.key:
                return True
        elif key == taint.key and (tol.get("value") or "") == taint.value:
            return True
    return False


def node_allowed(node: NodeRecord, pod_spec: Mapping[str, Any]) -> bool:
    """Does the pod spec's nodeSelector, required affinity and tolerations admit this node?"""
    labels = node.label_map
    for key, value in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(key) != str(value):
            return False
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {})
    terms = required.get("nodeSelectorTerms")
    if terms is not None:
        field = "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
        if not any(_term_matches(t, node, labels, f"{field}[{i}]") for i, t in enumerate(terms)):
            return False
    tolerations = pod_spec.get("tolerations") or ()
    return all(
        tolerates(taint, tolerations) for taint in node.taints if taint.effect in ("NoSchedule", "NoExecute")
    )


def has_constraints(pod_spec: Mapping[str, Any]) -> bool:
    return bool(
        pod_spec.get("nodeSelector")
        or ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
    )


def constraints_key(pod_spec: Mapping[str, Any]) -> Any:
    """A hashable form of what decides eligibility: jobs with equal keys share one answer (and one
    frozenset object, which the core's mask cache keys on)."""
    return freeze({k: pod_spec.get(k) for k in ("nodeSelector", "affinity", "tolerations")})


class Eligibility:
    """Memoised `allowed_nodes` per distinct set of constraints; reset whenever the nodes change."""

    def __init__(self) -> None:
        self._nodes: tuple[NodeRecord, ...] = ()
        self._any_taint = False
        self._memo: dict[Any, frozenset[NodeName] | None] = {}

    def set_nodes(self, nodes: Iterable[NodeRecord]) -> None:
        self._nodes = tuple(nodes)
        self._any_taint = any(
            t.effect in ("NoSchedule", "NoExecute") for n in self._nodes for t in n.taints
        )
        self._memo.clear()

    def allowed(self, pod_spec: Mapping[str, Any], key: Any) -> frozenset[NodeName] | None:
        """The nodes the spec admits, or None for all of them. `key`: a hashable form of the spec's
        constraints (equal keys, equal answers). Raises `ConstraintError` for an unusable term."""
        if not self._any_taint and not has_constraints(pod_spec):
            return None
        if key in self._memo:
            return self._memo[key]
        allowed = frozenset(n.node.name for n in self._nodes if node_allowed(n, pod_spec))
        result = None if len(allowed) == len(self._nodes) else allowed
        self._memo[key] = result
        return result
