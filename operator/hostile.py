"""`leitstand bench hostile`: bad input at volume, against the real API server and a running `leitstand run`.

Three streams, sent by the identities that would send them (tenant-a for TrainingJobs, the admin for
Queues), while a tenant's ordinary jobs keep being scheduled:

* **malformed** objects, generated from the CRDs' own schemas (`deploy/crds/`): a valid object with one
  violation drawn from what the schema says — a wrong type, a number below its minimum or above its
  maximum, a string past its maxLength or outside its enum, a missing required field, an unknown field,
  and the CEL rules (gpus with gpuFraction, neither, limit below quota, a queue its own parent) — plus
  names Kubernetes refuses. Each must be refused at the API server (HTTP 4xx) with a message that
  names the violated field; one accepted is a hole in our schema.
* **hostile but valid** objects the schema lets in: gangs of 100,000 replicas, billions of GPUs per
  replica, unknown queues, GPU models, pools, jurisdictions and priority classes, fractions of a
  thousandth, names of 63 characters, unicode in annotations and environment, queue cycles and
  chains, absurd quotas. The operator must not crash or stall: every one ends with a status that says
  why it waits (or runs), and the ordinary jobs finish as without them.
* **valid** one-GPU jobs of a few seconds, timed twice: alone (baseline) and beside the two streams.

Everything is judged from the API server (status of every object, the operator's process still the
same one, its log free of failed cycles). `tests/e2e/test_hostile_input.py` runs a small version.
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from leitstand.operator.cluster import controlplane
from leitstand.operator.cluster.kubeapi import KubeApi
from leitstand.operator.cluster.layout import repo_root, run_dir
from leitstand.operator.faults import GROUP_PATH, _install, api_as, ensure_cluster, lead_or_raise
from leitstand.operator.service.launcher import OperatorProcess, start_operator

Report = Callable[[str], None]
CRDS = repo_root() / "deploy" / "crds"
LABEL = "leitstand.dev/campaign"
NAMESPACE = "tenant-a"
QUEUE = "tenant-a"
DELETE = object()
"""A violation that removes the field instead of setting it."""

CONFIG = """\
scheduler: {min_runtime_seconds: 3}
cycle_min_interval_seconds: 0.1
"""


def crd_schema(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((CRDS / f"{name}.yaml").read_text())
    return dict(doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


@dataclass(frozen=True)
class Violation:
    path: tuple[str, ...]
    """Where in the object, e.g. ("spec", "replicas")."""
    value: Any
    what: str
    field: str
    """The field the API server's message must name (dotted, as in its causes)."""


def schema_violations(schema: dict[str, Any], path: tuple[str, ...]) -> Iterator[Violation]:
    """Every single-field violation the schema itself states, walking its properties."""
    dotted = ".".join(path)
    kind = schema.get("type") if path else None  # the root's own type is the API server's business
    wrong_type = {"integer": "many", "number": "lots", "string": 12345, "boolean": "maybe",
                  "array": "not-a-list", "object": "not-an-object"}
    if kind in wrong_type:
        yield Violation(path, wrong_type[kind], f"{kind} given as {type(wrong_type[kind]).__name__}", dotted)
    if kind == "integer":
        yield Violation(path, 1.5, "integer given a fraction", dotted)
    if kind in ("integer", "number"):
        if "minimum" in schema:
            low = schema["minimum"] if schema.get("exclusiveMinimum") else schema["minimum"] - 1
            yield Violation(path, low, f"below its minimum {schema['minimum']}", dotted)
        if "maximum" in schema:
            high = schema["maximum"] if schema.get("exclusiveMaximum") else schema["maximum"] + 1
            yield Violation(path, high, f"above its maximum {schema['maximum']}", dotted)
    if kind == "string":
        if "maxLength" in schema:
            yield Violation(path, "x" * (schema["maxLength"] + 1), f"longer than {schema['maxLength']}", dotted)
        if schema.get("minLength"):
            yield Violation(path, "", "empty", dotted)
        if "enum" in schema:
            yield Violation(path, "galaxy", "outside its enum", dotted)
        if "pattern" in schema:
            yield Violation(path, "not a valid value!", "against its pattern", dotted)
    if kind == "array":
        if "maxItems" in schema:
            yield Violation(path, [f"v{i}" for i in range(schema["maxItems"] + 1)], "too many items", dotted)
        if schema.get("minItems"):
            yield Violation(path, [], "too few items", dotted)
        items = schema.get("items") or {}
        if items.get("type") not in (None, "object", "array"):
            for inner in schema_violations(items, ("item",)):
                yield Violation(path, [inner.value], f"an item {inner.what}", f"{dotted}[0]")
    prefix = f"{dotted}." if dotted else ""
    if (schema.get("type") == "object" and not schema.get("x-kubernetes-preserve-unknown-fields")
            and "properties" in schema):
        yield Violation((*path, "surplusField"), 1, "an unknown field", f"{prefix}surplusField")
    for required in schema.get("required", ()):
        yield Violation((*path, required), DELETE, "a required field missing", f"{prefix}{required}")
    for name, sub in (schema.get("properties") or {}).items():
        if path == () and name in ("apiVersion", "kind", "metadata", "status"):
            continue
        yield from schema_violations(sub, (*path, name))


def _set(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = obj
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = copy.deepcopy(value)


def base_trainingjob(name: str, rng: random.Random, queue: str = QUEUE, seconds: int = 5) -> dict[str, Any]:
    spec: dict[str, Any] = {"queue": queue, "replicas": rng.choice((1, 1, 2)), "gpus": rng.choice((1, 2)),
                            "template": {"metadata": {"annotations": {"leitstand.dev/sim-duration": f"{seconds}s"}},
                                         "spec": {"containers": [{"name": "main", "image": "registry.example/t:1"}]}}}
    return {"apiVersion": "leitstand.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {LABEL: "hostile"}}, "spec": spec}


def base_queue(name: str, rng: random.Random) -> dict[str, Any]:
    return {"apiVersion": "leitstand.dev/v1alpha1", "kind": "Queue",
            "metadata": {"name": name, "labels": {LABEL: "hostile"}},
            "spec": {"parent": "hostile-root", "gpu": {"quota": rng.choice((0, 1, 2)), "limit": 4},
                     "namespaces": [NAMESPACE]}}


def rule_violations(kind: str) -> list[Violation]:
    """The CEL rules and metadata rules the walk of the schema cannot see."""
    if kind == "TrainingJob":
        return [
            Violation(("spec", "gpuFraction"), 0.5, "gpus and gpuFraction both set", "spec.gpuFraction"),
            Violation(("spec", "gpus"), DELETE, "neither gpus nor gpuFraction", "spec.gpus"),
            Violation(("metadata", "name"), "Upper_Case", "a name Kubernetes refuses", "metadata.name"),
            Violation(("metadata", "name"), "ü" * 10, "a unicode name", "metadata.name"),
            Violation(("metadata", "name"), "n" * 254, "a name longer than 253", "metadata.name"),
            Violation(("metadata", "name"), "n" * 64, "a name longer than a pod label holds", "metadata.name"),
            Violation(("spec", "gpuFraction"), 0.0004, "a fraction below a thousandth", "spec.gpuFraction"),
            Violation(("spec", "gpuFraction"), 0.9999, "a fraction that rounds to a whole GPU", "spec.gpuFraction"),
        ]
    return [
        Violation(("spec", "gpu"), {"quota": 2, "limit": 0.5}, "limit below quota", "spec.gpu"),
        Violation(("spec", "parent"), "@self", "its own parent", "spec.parent"),
        Violation(("metadata", "name"), "Upper_Case", "a name Kubernetes refuses", "metadata.name"),
    ]


def malformed(count: int, seed: int) -> list[tuple[dict[str, Any], Violation]]:
    """`count` objects, half TrainingJobs and half Queues, each with one violation (cycled, seeded)."""
    rng = random.Random(seed)
    kinds = {
        "TrainingJob": [*schema_violations(crd_schema("trainingjobs"), ()), *rule_violations("TrainingJob")],
        "Queue": [*schema_violations(crd_schema("queues"), ()), *rule_violations("Queue")],
    }
    out = []
    for i in range(count):
        kind = "TrainingJob" if i % 2 == 0 else "Queue"
        violations = kinds[kind]
        violation = violations[(i // 2) % len(violations)]
        name = f"bad-{i:05d}"
        obj = base_trainingjob(name, rng) if kind == "TrainingJob" else base_queue(name, rng)
        value = name if violation.value == "@self" else violation.value
        _set(obj, violation.path, value)
        out.append((obj, violation))
    return out


HOSTILE_KINDS = ("huge-gang", "huge-replica", "unknown-queue", "unknown-model", "unknown-pool", "unknown-jurisdiction",
                 "unknown-priority-class", "tiny-fraction", "long-name", "unicode", "node-topology-gang",
                 "forever", "max-backoff")


def hostile(count: int, seed: int) -> list[tuple[dict[str, Any], str]]:
    """`count` objects the schema accepts but a careless scheduler would choke on (90 % TrainingJobs)."""
    rng = random.Random(seed)
    out: list[tuple[dict[str, Any], str]] = []
    queues = max(1, count // 10)
    # Queues: a cycle, a long chain, unknown parents, absurd quotas, names at the limit.
    for i in range(queues):
        name = f"hq-{i:04d}"
        obj = base_queue(name, rng)
        what = ("cycle", "chain", "unknown-parent", "absurd-quota", "long-name")[i % 5]
        if what == "cycle":
            obj["spec"]["parent"] = f"hq-{(i + 5) % queues:04d}" if queues > 5 else name + "-x"
        elif what == "chain":
            obj["spec"]["parent"] = f"hq-{i - 5:04d}" if i >= 5 else "hostile-root"
        elif what == "unknown-parent":
            obj["spec"]["parent"] = f"nobody-{rng.randrange(10**9)}"
        elif what == "absurd-quota":
            obj["spec"]["gpu"] = {"quota": 1e12, "limit": 1e15, "overQuotaWeight": 1e9}
        else:
            obj["metadata"]["name"] = (name + "-" + "q" * 253)[:253]
        out.append((obj, f"queue-{what}"))
    for i in range(count - queues):
        what = HOSTILE_KINDS[i % len(HOSTILE_KINDS)]
        obj = base_trainingjob(f"hj-{i:05d}", rng, seconds=5)
        spec = obj["spec"]
        if what == "huge-gang":
            spec["replicas"] = rng.choice((10**4, 10**5))  # the schema's maximum; 2^31 is malformed
        elif what == "huge-replica":
            spec["gpus"] = rng.choice((9, 10**6, 2**31 - 1))
        elif what == "unknown-queue":
            spec["queue"] = f"no-such-queue-{rng.randrange(10**9)}"
        elif what == "unknown-model":
            spec["gpuModel"] = "NVIDIA-Z9000"
        elif what == "unknown-pool":
            spec["nodePool"] = "atlantis"
        elif what == "unknown-jurisdiction":
            spec["dataResidency"] = ["mars-1", "eu-nowhere"]
        elif what == "unknown-priority-class":
            spec["priorityClassName"] = "does-not-exist"
        elif what == "tiny-fraction":
            del spec["gpus"]
            spec["gpuFraction"] = rng.choice((0.001, 0.999))
        elif what == "long-name":
            obj["metadata"]["name"] = (f"hj-{i:05d}-" + "l" * 63)[:63]
        elif what == "unicode":
            spec["template"]["metadata"]["annotations"]["note"] = "训练 🚀 Ünïcödé \u202e reversed"
            spec["template"]["spec"]["containers"][0]["env"] = [{"name": "GREETING", "value": "Grüß Gott 🙂"}]
        elif what == "node-topology-gang":
            spec.update(replicas=rng.choice((3, 64)), gpus=8, topology={"required": "node"})
        elif what == "forever":
            spec["maxRuntimeSeconds"] = 2**62
        elif what == "max-backoff":
            spec["backoffLimit"] = 100
            spec["template"]["metadata"]["annotations"]["leitstand.dev/sim-fail"] = "true"
        out.append((obj, what))
    return out


def valid_jobs(count: int, prefix: str, seconds: int = 5) -> list[dict[str, Any]]:
    rng = random.Random(count)
    jobs = []
    for i in range(count):
        job = base_trainingjob(f"{prefix}-{i:04d}", rng, seconds=seconds)
        job["spec"].update(replicas=1, gpus=1)
        job["metadata"]["labels"][LABEL] = prefix
        jobs.append(job)
    return jobs


def _path(obj: dict[str, Any]) -> str:
    if obj["kind"] == "Queue":
        return f"{GROUP_PATH}/queues?fieldValidation=Strict"
    return f"{GROUP_PATH}/namespaces/{obj['metadata']['namespace']}/trainingjobs?fieldValidation=Strict"


def names_field(reply: Any, wanted: str) -> bool:
    """Does the API server's refusal name the field (in its causes or its message)?"""
    if not isinstance(reply, dict):
        return wanted in str(reply)
    causes = [str(c.get("field", "")) for c in ((reply.get("details") or {}).get("causes") or ())]
    text = str(reply.get("message", ""))
    leaf = wanted.rsplit(".", 1)[-1]
    return any(c == wanted or c.startswith(wanted + ".") or c.startswith(wanted + "[") for c in causes) or (
        wanted in text or f'"{leaf}"' in text or f".{leaf}" in text)


@dataclass
class HostileResult:
    malformed: int = 0
    refused: int = 0
    refused_naming_field: int = 0
    accepted_malformed: list[str] = field(default_factory=list)
    unnamed: list[str] = field(default_factory=list)
    hostile: int = 0
    hostile_accepted: int = 0
    hostile_refused: Counter[str] = field(default_factory=Counter)
    hostile_outcomes: Counter[str] = field(default_factory=Counter)
    hostile_without_reason: list[str] = field(default_factory=list)
    valid_alone_seconds: float = 0.0
    valid_beside_seconds: float = 0.0
    valid_succeeded: int = 0
    valid: int = 0
    flood_sent_at: float = 0.0
    statuses_complete_seconds: float | None = None
    """From the last hostile object sent until every one has a status (None: not within settle_seconds)."""
    operator_restarts: int = 0
    failed_cycles: int = 0
    operator_cpu_seconds: float = 0.0
    operator_rss_mib: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (not self.accepted_malformed and not self.unnamed and not self.hostile_without_reason
                and self.statuses_complete_seconds is not None
                and self.valid_succeeded == 2 * self.valid and self.operator_restarts == 0 and self.failed_cycles == 0)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.pop("flood_sent_at")
        out["hostile_refused"] = dict(self.hostile_refused)
        out["hostile_outcomes"] = dict(sorted(self.hostile_outcomes.items()))
        out["ok"] = self.ok
        return out


def _run_valid(tenant: KubeApi, admin: KubeApi, jobs: list[dict[str, Any]], timeout: float,
               during: Callable[[], None] | None = None) -> tuple[float, int]:
    """Submit the jobs while `during` runs in a thread (if given), wait until all of them end; (seconds
    from the first submission to the last job ended, succeeded). `during` is waited for too."""
    flood = threading.Thread(target=during, daemon=True) if during is not None else None
    if flood is not None:
        flood.start()
    t0 = time.monotonic()
    for job in jobs:
        tenant.create(_path(job), job, exist_ok=False)
    label = jobs[0]["metadata"]["labels"][LABEL]
    phases: dict[str, str] = {}
    while time.monotonic() - t0 < timeout:
        items = admin.get(f"{GROUP_PATH}/namespaces/{NAMESPACE}/trainingjobs?labelSelector={LABEL}%3D{label}")["items"]
        phases = {j["metadata"]["name"]: (j.get("status") or {}).get("phase", "") for j in items}
        if len(phases) == len(jobs) and all(p in ("Succeeded", "Failed") for p in phases.values()):
            break
        time.sleep(0.5)
    seconds = time.monotonic() - t0
    if flood is not None:
        flood.join()
    return seconds, sum(1 for p in phases.values() if p == "Succeeded")


def run_hostile(*, malformed_count: int = 1000, hostile_count: int = 1000, valid: int = 100, seed: int = 11,
                nodes: int = 16, settle_seconds: float = 180.0, timeout_seconds: float = 600.0,
                report: Report = print) -> HostileResult:
    run = run_dir()
    started_cluster = ensure_cluster(nodes, report)
    result = HostileResult(malformed=malformed_count, hostile=hostile_count, valid=valid)
    operator: OperatorProcess | None = None
    admin = api_as(run, "admin")
    tenant = api_as(run, "tenant-a")
    t_start = time.monotonic()
    try:
        _install(run, admin)
        admin.create(f"{GROUP_PATH}/queues", {"apiVersion": "leitstand.dev/v1alpha1", "kind": "Queue",
                                               "metadata": {"name": "hostile-root", "labels": {LABEL: "hostile"}},
                                               "spec": {"gpu": {"quota": 0}}})
        config = run / "hostile-config.yaml"
        config.write_text(CONFIG)
        log = run / "logs" / "leitstand-run-hostile.log"
        operator = start_operator(run / "leitstand-operator.kubeconfig", log, config=config)
        lead_or_raise(operator, 120, log)
        pid = operator.pid

        result.valid_alone_seconds, alone_ok = _run_valid(tenant, admin, valid_jobs(valid, "alone"), timeout_seconds)
        report(f"hostile: {valid} valid jobs alone: {result.valid_alone_seconds:.1f} s, {alone_ok} Succeeded")

        bad = malformed(malformed_count, seed)
        worst = hostile(hostile_count, seed + 1)

        def flood() -> None:
            t = time.monotonic()
            for obj, violation in bad:
                client = tenant if obj["kind"] == "TrainingJob" else admin
                status, reply = client.request("POST", _path(obj), obj)
                label = f"{obj['kind']} {obj['metadata']['name'][:40]}: {violation.what} at {violation.field}"
                if status < 400:
                    result.accepted_malformed.append(label)
                    continue
                result.refused += 1
                if names_field(reply, violation.field):
                    result.refused_naming_field += 1
                else:
                    said = reply.get("message") if isinstance(reply, dict) else reply
                    result.unnamed.append(f"{label} -> {status} {str(said)[:200]}")
            report(f"hostile: {len(bad)} malformed objects sent in {time.monotonic() - t:.1f} s: "
                   f"{result.refused} refused, {result.refused_naming_field} naming the field")
            t = time.monotonic()
            for obj, what in worst:
                client = tenant if obj["kind"] == "TrainingJob" else admin
                status, reply = client.request("POST", _path(obj), obj)
                if status < 400:
                    result.hostile_accepted += 1
                else:
                    result.hostile_refused[f"{what}: HTTP {status}"] += 1
            report(f"hostile: {len(worst)} hostile-but-valid objects sent in {time.monotonic() - t:.1f} s "
                   f"({result.hostile_accepted} accepted)")
            result.flood_sent_at = time.monotonic()

        result.valid_beside_seconds, beside_ok = _run_valid(tenant, admin, valid_jobs(valid, "beside"),
                                                            timeout_seconds, during=flood)
        result.valid_succeeded = alone_ok + beside_ok
        report(f"hostile: {valid} valid jobs beside the flood: {result.valid_beside_seconds:.1f} s, "
               f"{beside_ok} Succeeded")
        # Statuses are written apart from the cycle, after binds: wait (at most settle_seconds) until every
        # hostile object has one, and say how long that took after the flood was sent.
        sent = {obj["metadata"]["name"]: what for obj, what in worst}
        deadline = time.monotonic() + settle_seconds
        while True:
            items = admin.get(f"{GROUP_PATH}/namespaces/{NAMESPACE}/trainingjobs?labelSelector={LABEL}%3Dhostile")[
                "items"]
            items += admin.get(f"{GROUP_PATH}/queues?labelSelector={LABEL}%3Dhostile")["items"]
            missing = sum(1 for i in items if i["metadata"]["name"] in sent and not (i.get("status") or {}))
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        result.statuses_complete_seconds = round(time.monotonic() - result.flood_sent_at, 1) if not missing else None
        for item in items:
            name = item["metadata"]["name"]
            if name not in sent:
                continue
            status = item.get("status") or {}
            conditions = status.get("conditions") or []
            if item["kind"] == "Queue":
                valid_condition = next((c for c in conditions if c.get("type") == "Valid"), None)
                outcome = f"queue {valid_condition['reason']}" if valid_condition else "queue (no status)"
                if valid_condition is None or not valid_condition.get("message"):
                    result.hostile_without_reason.append(f"Queue {name} ({sent[name]})")
            else:
                phase = status.get("phase", "")
                reason = status.get("reason") or next((c.get("reason") for c in conditions
                                                       if c.get("status") == "True" and c.get("type") != "Running"), "")
                message = status.get("message") or next((c.get("message") for c in conditions if c.get("message")), "")
                outcome = f"{phase or '(no status)'}/{reason or '-'}"
                if not phase or (phase == "Pending" and not message):
                    result.hostile_without_reason.append(f"TrainingJob {name[:40]} ({sent[name]}): {status}")
            result.hostile_outcomes[f"{sent[name]} -> {outcome}"] += 1
        result.failed_cycles = operator.log_text().count("cycle failed")
        result.operator_restarts = 0 if operator.alive() and operator.pid == pid else 1
        result.operator_cpu_seconds = round(operator.cpu_seconds(), 1)
        result.operator_rss_mib = round(operator.rss_mib(), 1)
    finally:
        result.seconds = round(time.monotonic() - t_start, 1)
        try:
            if operator is not None:
                operator.stop()
                kept = run.parent / f"{run.name}-leitstand-run-hostile.log"
                kept.write_text(operator.log_text())
                report(f"hostile: operator log kept in {kept}")
            if not started_cluster:  # a cluster we leave running gets its objects back; ours goes away whole
                cleaner = KubeApi(admin.server, admin.token, admin.ca_file, timeout_seconds=300)
                for path in (f"{GROUP_PATH}/namespaces/{NAMESPACE}/trainingjobs?labelSelector={LABEL}",
                             f"{GROUP_PATH}/queues?labelSelector={LABEL}%3Dhostile"):
                    try:
                        cleaner.request("DELETE", path)
                    except (OSError, TimeoutError) as exc:
                        report(f"hostile: could not delete {path}: {exc}")
                cleaner.close_all()
        finally:
            admin.close_all()
            tenant.close_all()
            if started_cluster:
                controlplane.down(report=report)
    return result


def render(result: HostileResult, report: Report = print) -> None:
    report("")
    report(f"malformed objects: {result.malformed} sent, {result.refused} refused at the API server, "
           f"{result.refused_naming_field} with a message naming the violated field; "
           f"{len(result.accepted_malformed)} accepted")
    for line in result.accepted_malformed[:20]:
        report(f"  ACCEPTED: {line}")
    for line in result.unnamed[:20]:
        report(f"  refused without naming the field: {line}")
    report(f"hostile-but-valid objects: {result.hostile} sent, {result.hostile_accepted} accepted, "
           f"refused: {dict(result.hostile_refused) or 'none'}")
    report("  outcome (status on the API server)            count")
    for outcome, n in sorted(result.hostile_outcomes.items()):
        report(f"  {outcome:<60} {n:5d}")
    for line in result.hostile_without_reason[:20]:
        report(f"  NO REASON: {line}")
    done = result.statuses_complete_seconds
    report("  every hostile object had a status " + (f"{done:.1f} s after the last was sent" if done is not None
                                                      else "NOT within the settle time"))
    ratio = result.valid_beside_seconds / result.valid_alone_seconds if result.valid_alone_seconds else float("nan")
    report(f"valid one-GPU jobs: {result.valid} alone in {result.valid_alone_seconds:.1f} s, {result.valid} beside the "
           f"flood in {result.valid_beside_seconds:.1f} s ({ratio:.2f}x); {result.valid_succeeded}/{2 * result.valid} "
           f"Succeeded")
    report(f"operator: {result.operator_restarts} restarts, {result.failed_cycles} failed cycles, "
           f"{result.operator_cpu_seconds} CPU s, {result.operator_rss_mib} MiB RSS at the end; run {result.seconds} s")
    report("verdict: " + ("ok" if result.ok else "NOT OK"))


def hostile_bench(malformed_count: int = 1000, hostile_count: int = 1000, valid: int = 100, seed: int = 11,
                  nodes: int = 16, as_json: bool = False) -> int:
    result = run_hostile(malformed_count=malformed_count, hostile_count=hostile_count, valid=valid, seed=seed,
                         nodes=nodes, report=print if not as_json else (lambda _line: None))
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        render(result)
    return 0 if result.ok else 1
