"""The operator service's own Kubernetes plumbing against the real local cluster, as the least-privilege
user `leitstand-operator`: `kubeclient` (list, bind, evict), `informer` (list+watch of nodes and pods,
a relist after a real 410 from kube-apiserver) and `leader` (a Lease taken over after the holder
stops renewing, with the measured takeover time, and handed over on release).

Also a micro-benchmark (`bench_binds`, run by a test with a small count, or as a script against a
running cluster: `python tests/e2e/test_service_client.py RUN_DIR [PODS]` where RUN_DIR holds the
admin and leitstand-operator kubeconfigs, e.g. `$LEITSTAND_RUN` of `leitstand cluster up`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from leitstand.operator.service.informer import Informer
from leitstand.operator.service.kubeclient import ApiError, KubeClient, TransportError, load_credentials
from leitstand.operator.service.leader import LeaderElector

if TYPE_CHECKING:
    from .conftest import Cluster

OPERATOR = "leitstand-operator"


# --------------------------------------------------------------------------------------------------
# helpers


@dataclass(frozen=True, slots=True)
class SlimPod:
    uid: str
    node: str
    phase: str
    deleting: bool


def slim_pod(obj: dict[str, Any]) -> SlimPod:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    return SlimPod(meta["uid"], spec.get("nodeName", ""), status.get("phase", ""), "deletionTimestamp" in meta)


@dataclass(frozen=True, slots=True)
class SlimNode:
    gpus: str
    ready: bool


def slim_node(obj: dict[str, Any]) -> SlimNode:
    status = obj.get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
    return SlimNode((status.get("allocatable") or {}).get("nvidia.com/gpu", "0"), ready)


def pod_manifest(name: str, scheduler: str = "leitstand") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "schedulerName": scheduler,
            "containers": [{"name": "main", "image": "train:latest"}],
            "terminationGracePeriodSeconds": 0,
        },
    }


async def until(check: Callable[[], bool], timeout_seconds: float, what: str) -> float:
    """Wait for `check()`; return the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_seconds:
            raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def operator_client(cluster: Cluster, **kw: Any) -> KubeClient:
    return KubeClient(load_credentials(str(cluster.kubeconfig(OPERATOR))), **kw)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"svc-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode != 0:
        assert time.monotonic() < deadline, "the default ServiceAccount never appeared"
        time.sleep(0.2)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


# --------------------------------------------------------------------------------------------------
# client + informers


def test_informers_follow_nodes_and_pods_and_the_client_binds_and_evicts(cluster: Cluster, namespace: str) -> None:
    pod_events: list[tuple[str, str, SlimPod | None, SlimPod | None]] = []
    node_callbacks = 0

    def on_node(kind: str, key: str, old: SlimNode | None, new: SlimNode | None) -> None:
        nonlocal node_callbacks
        node_callbacks += 1

    def on_pod(kind: str, key: str, old: SlimPod | None, new: SlimPod | None) -> None:
        pod_events.append((kind, key, old, new))

    async def main() -> None:
        client = operator_client(cluster)
        nodes = Informer(client, "/api/v1/nodes", slim_node, on_node, name="nodes", page_size=4)
        pods = Informer(
            client,
            "/api/v1/pods",
            slim_pod,
            on_pod,
            name="pods",
            params={"fieldSelector": f"metadata.namespace={namespace}"},
        )
        tasks = [asyncio.create_task(nodes.run()), asyncio.create_task(pods.run())]
        try:
            await asyncio.wait_for(asyncio.gather(nodes.synced.wait(), pods.synced.wait()), 30)
            assert sorted(n.gpus for n in nodes.store.values()) == ["2", "2", "8", "8", "8", "8"]
            assert all(n.ready for n in nodes.store.values()) and node_callbacks == 6
            assert pods.store == {}

            cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(pod_manifest("job-0")))
            key = f"{namespace}/job-0"
            seen = await until(lambda: key in pods.store, 20, "the new pod in the informer")
            print(f"\npod created by admin seen by the informer after {seen * 1000:.0f} ms")
            assert pod_events[0][:2] == ("ADDED", key)
            uid = pods.store[key].uid

            status, body = await client.bind_pod(
                namespace, "job-0", "b200-0000", uid=uid, annotations={"leitstand.dev/gpus": "0,1,2,3"}
            )
            assert status == 201, body
            await until(lambda: pods.store[key].node == "b200-0000", 20, "the binding in the informer")
            pod = cluster.get_json("pod", "job-0", "-n", namespace)
            assert pod["metadata"]["annotations"]["leitstand.dev/gpus"] == "0,1,2,3"
            status, body = await client.bind_pod(namespace, "job-0", "b200-0001")
            assert status == 409, body  # already bound: the binder reconciles from the informer
            assert (await client.bind_pod(namespace, "nope", "b200-0000"))[0] == 404
            with pytest.raises(ApiError) as caught:
                await client.get(f"/api/v1/namespaces/{namespace}/pods/nope")
            assert caught.value.reason == "NotFound"

            await until(lambda: pods.store[key].phase == "Running", 30, "KWOK to run the pod")
            status, body = await client.evict_pod(namespace, "job-0", uid=uid)
            assert status in (200, 201), body
            await until(lambda: key not in pods.store or pods.store[key].deleting, 30, "the eviction")
            gone = await until(lambda: key not in pods.store, 30, "the evicted pod to be deleted")
            assert pod_events[-1][0] == "DELETED"
            print(f"evicted pod deleted {gone:.1f} s after its deletionTimestamp was seen")
            assert (await client.evict_pod(namespace, "job-0"))[0] == 404
            print(
                f"informer counters: nodes {nodes.counters}, pods {pods.counters}; node callbacks "
                f"{node_callbacks}; requests {client.counts}"
            )
            assert nodes.counters.relists == 1 and pods.counters.relists == 1 and pods.counters.errors == 0
        finally:
            nodes.stop()
            pods.stop()
            await asyncio.gather(*tasks)
            await client.close()

    asyncio.run(main())


PROBE_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: probes.{group}}}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: probes, singular: probe, kind: Probe}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "probe-reader:{group}"}}
rules:
- {{apiGroups: ["{group}"], resources: [probes], verbs: [get, list, watch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "probe-reader:{group}"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "probe-reader:{group}"}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}
"""


class FirstListReportsResourceVersion1(KubeClient):
    """Rewrites the first list's resourceVersion to "1", so the informer's first watch starts from a
    resourceVersion kube-apiserver no longer serves. Everything else is the real client."""

    first = True

    async def get(self, path: str, params: Any = None) -> Any:
        body = await super().get(path, params)
        if self.first and "items" in body:
            self.first = False
            body["metadata"]["resourceVersion"] = "1"
        return body


def test_a_real_410_makes_the_informer_relist(cluster: Cluster, namespace: str) -> None:
    """On a fresh cluster a watch from resourceVersion=1 of a built-in kind is still served (the watch
    cache was filled from revision ~1 and etcd has not compacted), so no 410 can be forced there. A
    CRD created now gets its own watch cache starting at the current revision, and for it
    kube-apiserver answers resourceVersion=1 with a real 410 (an ERROR event: "too old resource
    version"). That is the 410 used here."""
    group = f"p{uuid.uuid4().hex[:8]}.e2e.leitstand.dev"
    cluster.kubectl("apply", "-f", "-", stdin=PROBE_CRD.format(group=group, user=OPERATOR))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/probes.{group}", "--timeout=30s")
    path = f"/apis/{group}/v1/probes"

    def probe(name: str, size: int) -> str:
        return json.dumps({"apiVersion": f"{group}/v1", "kind": "Probe", "metadata": {"name": name}, "size": size})

    cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=probe("first", 1))
    events: list[tuple[str, str]] = []

    async def main() -> None:
        client = operator_client(cluster)
        try:
            await until_allowed(client, path)
            # What the server says to a watch from resourceVersion=1:
            async with contextlib.aclosing(client.watch_stream(path, {"watch": "1", "resourceVersion": "1"})) as stream:
                try:
                    answer = [e async for e in stream]
                except ApiError as exc:
                    answer = [{"http": exc.status, "reason": exc.reason}]
            print(f"\nwatch from resourceVersion=1: {answer}")
            assert answer and (answer[0].get("http") == 410 or answer[0]["object"]["code"] == 410)
        finally:
            await client.close()

        stale = FirstListReportsResourceVersion1(load_credentials(str(cluster.kubeconfig(OPERATOR))))
        informer = Informer(
            stale, path, lambda o: o.get("size"), lambda kind, key, old, new: events.append((kind, key)), name="probes"
        )
        task = asyncio.create_task(informer.run())
        try:
            await until(lambda: informer.counters.relists == 2, 20, "the relist after the 410")
            assert informer.counters.gone == 1
            assert events == [("ADDED", f"{namespace}/first")]  # the relist found nothing new
            cluster.kubectl("create", "-n", namespace, "-f", "-", stdin=probe("second", 2))
            await until(lambda: len(events) == 2, 20, "the watch after the relist")
            assert events[1] == ("ADDED", f"{namespace}/second")
            print(f"informer after the real 410: {informer.counters}")
        finally:
            informer.stop()
            await task
            await stale.close()

    try:
        asyncio.run(main())
    finally:
        cluster.kubectl("delete", "crd", f"probes.{group}", "--wait=false", check=False)
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", f"probe-reader:{group}", check=False)


async def until_allowed(client: KubeClient, path: str) -> None:
    """RBAC objects take effect within a moment of creation; wait for the list to be allowed."""
    deadline = time.monotonic() + 20
    while (await client.request("GET", path, params={"limit": "1"}))[0] == 403:
        assert time.monotonic() < deadline, f"{OPERATOR} is still forbidden to list {path}"
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------------------------------
# Lease


class Partitionable(KubeClient):
    """A client whose network can be cut (every request then fails as a dropped connection would)."""

    cut = False

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        if self.cut:
            raise TransportError(method, path, 1, ConnectionResetError("partitioned by the test"))
        return await super().request(method, path, body, **kw)


@dataclass
class Candidate:
    elector: LeaderElector
    client: KubeClient
    started_at: float | None = None
    stopped_at: float | None = None
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def lead() -> None:
            self.started_at = time.monotonic()
            await asyncio.Event().wait()

        def stopped() -> None:
            self.stopped_at = time.monotonic()

        self.task = asyncio.create_task(self.elector.run(lead, stopped))


def candidate(cluster: Cluster, namespace: str, identity: str) -> Candidate:
    """A replica with a 3 s lease, a 2 s renew deadline and a 0.5 s retry period."""
    client = Partitionable(load_credentials(str(cluster.kubeconfig(OPERATOR))), retries=0)
    elector = LeaderElector(
        client, namespace, "leitstand-e2e", identity, lease_seconds=3, renew_deadline_seconds=2.0, retry_seconds=0.5
    )
    return Candidate(elector, client)


def test_lease_takeover_after_the_holder_stops_renewing_and_handover_on_release(
    cluster: Cluster, namespace: str
) -> None:
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/leitstand-e2e"

    async def main() -> None:
        a, b, c = (candidate(cluster, namespace, name) for name in ("replica-a", "replica-b", "replica-c"))
        try:
            a.start()
            await until(lambda: a.elector.is_leader, 20, "replica-a to acquire the new Lease")
            b.start()
            await until(lambda: b.elector.holder == "replica-a", 10, "replica-b to see the holder")
            await asyncio.sleep(2)  # several renewals by a; b must not take over meanwhile
            assert b.started_at is None

            # 1. a is cut off from the API server: it must step down before b may take over.
            assert isinstance(a.client, Partitionable)
            a.client.cut = True
            cut_at = time.monotonic()
            await until(lambda: b.started_at is not None, 15, "replica-b to take over")
            assert a.task is not None and a.task.done() and a.stopped_at is not None and b.started_at is not None
            assert b.elector.is_leader and not a.elector.is_leader
            assert a.stopped_at < b.started_at
            takeover = b.started_at - cut_at
            print(
                f"\nlease 3 s / renew deadline 2 s / retry 0.5 s: replica-a stepped down "
                f"{a.stopped_at - cut_at:.2f} s after the cut, replica-b led {takeover:.2f} s after it "
                f"(gap without a leader {b.started_at - a.stopped_at:.2f} s)"
            )
            # b saw a's last renewal at the earliest when it was written (<= 0.5 s + a request
            # before the cut) and needs 3 s of an unchanged record, checked every 0.5-0.6 s.
            assert 2.3 <= takeover <= 5.0

            # 2. b crashes without releasing: c waits out the lease.
            c.start()
            await until(lambda: c.elector.holder == "replica-b", 10, "replica-c to see the holder")
            assert b.task is not None
            b.task.cancel()
            crashed_at = time.monotonic()
            await until(lambda: c.started_at is not None, 15, "replica-c to take over from the crashed holder")
            assert c.started_at is not None
            print(f"replica-c took over {c.started_at - crashed_at:.2f} s after replica-b crashed")
            assert 2.3 <= c.started_at - crashed_at <= 5.0

            # 3. c releases on shutdown: a fresh replica takes the Lease at its next retry.
            d = candidate(cluster, namespace, "replica-d")
            d.start()
            await until(lambda: d.elector.holder == "replica-c", 10, "replica-d to see the holder")
            released_at = time.monotonic()
            assert await c.elector.release()
            await until(lambda: d.elector.is_leader, 5, "replica-d to take the released Lease")
            handover = time.monotonic() - released_at
            print(f"replica-d took the released Lease after {handover:.2f} s")
            assert handover < 1.5
            lease = await d.client.get(lease_path)
            assert lease["spec"]["holderIdentity"] == "replica-d"
            assert lease["spec"]["leaseTransitions"] == 3  # a (0) -> b -> c -> d
            assert await d.elector.release()
            await d.client.close()
        finally:
            for x in (a, b, c):
                if x.task is not None:
                    x.task.cancel()
                    await asyncio.wait({x.task})
                await x.client.close()

    asyncio.run(main())


# --------------------------------------------------------------------------------------------------
# micro-benchmark


async def bench_binds(
    admin_kubeconfig: str, operator_kubeconfig: str, pods: int, concurrency: int = 64
) -> dict[str, Any]:
    """Create `pods` pods (admin), list them through an informer and bind them all (operator), in a
    namespace of its own; return rates, client CPU per bind and per listed pod."""
    admin = KubeClient(load_credentials(admin_kubeconfig), max_in_flight=concurrency)
    operator = KubeClient(load_credentials(operator_kubeconfig), max_in_flight=concurrency)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        await admin.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
        while (await admin.request("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default"))[0] != 200:
            await asyncio.sleep(0.1)
        nodes = [n["metadata"]["name"] for n in (await operator.get("/api/v1/nodes"))["items"]]
        names = [f"bench-{i:05d}" for i in range(pods)]
        bodies = [json.dumps(pod_manifest(n, scheduler="leitstand-bench")).encode() for n in names]

        start = time.monotonic()
        created = await asyncio.gather(
            *(admin.request("POST", f"/api/v1/namespaces/{namespace}/pods", b) for b in bodies)
        )
        create_seconds = time.monotonic() - start
        assert all(s == 201 for s, _ in created), {s for s, _ in created}

        informer = Informer(operator, f"/api/v1/namespaces/{namespace}/pods", slim_pod, lambda *e: None, name="bench")
        cpu, start = time.process_time(), time.monotonic()
        task = asyncio.create_task(informer.run())
        await informer.synced.wait()  # one paginated list (500 a page), timed on its own
        list_seconds, list_cpu = time.monotonic() - start, time.process_time() - cpu
        informer.stop()
        await task
        assert len(informer.store) == pods

        cpu, start = time.process_time(), time.monotonic()
        bound = await asyncio.gather(
            *(operator.bind_pod(namespace, n, nodes[i % len(nodes)]) for i, n in enumerate(names))
        )
        bind_seconds, bind_cpu = time.monotonic() - start, time.process_time() - cpu
        assert all(s == 201 for s, _ in bound), {s for s, _ in bound}
        return {
            "pods": pods,
            "concurrency": concurrency,
            "create_per_second": round(pods / create_seconds),
            "list_seconds": round(list_seconds, 3),
            "list_client_cpu_us_per_pod": round(list_cpu / pods * 1e6),
            "bind_per_second": round(pods / bind_seconds),
            "bind_client_cpu_ms_per_bind": round(bind_cpu / pods * 1e3, 3),
        }
    finally:
        await admin.request("DELETE", f"/api/v1/namespaces/{namespace}")
        await admin.close()
        await operator.close()


def test_bind_micro_benchmark(cluster: Cluster) -> None:
    result = asyncio.run(bench_binds(str(cluster.kubeconfig("admin")), str(cluster.kubeconfig(OPERATOR)), 300))
    print(f"\nbind micro-benchmark (2-core box, apiserver + etcd + KWOK on the same cores): {result}")
    assert result["bind_per_second"] > 0


if __name__ == "__main__":
    run_dir = Path(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    print(asyncio.run(bench_binds(str(run_dir / "admin.kubeconfig"), str(run_dir / f"{OPERATOR}.kubeconfig"), count)))
