"""Gang requests are kept between cycles (`CycleContext._build_request`) and rebuilt whenever what they
were built from changes: the job, its queue's node-pool reservation, the reserved pools, or any node's
schedulability. Each case runs two cycles on one maintained `ClusterState`, as the operator and the
replay simulator do, and checks the second cycle's decision, not the memo."""

from __future__ import annotations

from dataclasses import replace

from builders import make_job, make_node, make_queue, make_snapshot

from leitstand.scheduler.cycle import run_cycle
from leitstand.scheduler.model import NodeName, Plan, SchedulerConfig
from leitstand.scheduler.state import ClusterState


def _nodes_of(plan: Plan) -> set[str]:
    return {str(p.node) for b in plan.bindings for p in b.placements}


def test_a_node_cordoned_between_cycles_is_not_used_by_a_job_that_waited() -> None:
    nodes = [make_node("n0", 8), make_node("n1", 8)]
    state = ClusterState.from_nodes(nodes)
    snapshot = make_snapshot(nodes, [make_queue("a", quota_gpus=16)], [make_job("j", "a", 8)])
    first = run_cycle(snapshot, SchedulerConfig(), state=state)
    assert _nodes_of(first) == {"n0"}  # the first of two equal nodes
    # The binding was not applied (the caller applies them): the job waits again, and n0 is cordoned
    # in place, as the operator's cache does.
    state.schedulable[state.node_index[NodeName("n0")]] = False
    second = run_cycle(snapshot, SchedulerConfig(), state=state)
    assert _nodes_of(second) == {"n1"}


def test_a_job_resubmitted_under_the_same_id_with_another_model_gets_a_new_request() -> None:
    nodes = [make_node("n0", 8), make_node("n1", 8, model="H100")]
    state = ClusterState.from_nodes(nodes)
    queues = [make_queue("a", quota_gpus=16)]
    b200 = make_job("j", "a", 8, models=["B200"])
    first = run_cycle(make_snapshot(nodes, queues, [b200]), SchedulerConfig(), state=state)
    assert _nodes_of(first) == {"n0"}
    h100 = replace(b200, gpu_models=frozenset({"H100"}))
    second = run_cycle(make_snapshot(nodes, queues, [h100]), SchedulerConfig(), state=state)
    assert _nodes_of(second) == {"n1"}


def test_a_queue_given_a_node_pool_between_cycles_has_its_waiting_job_placed_only_there() -> None:
    nodes = [make_node("n0", 8, pool="shared"), make_node("n1", 8, pool="research")]
    state = ClusterState.from_nodes(nodes)
    job = make_job("j", "a", 8)
    open_queues = [make_queue("a", quota_gpus=16)]
    first = run_cycle(make_snapshot(nodes, open_queues, [job]), SchedulerConfig(), state=state)
    assert _nodes_of(first) == {"n0"}  # before the reservation: the first of two equal nodes
    reserved = [make_queue("a", quota_gpus=16, pool="research")]
    for _ in range(2):  # the memo holds the first cycle's request; the reservation must still count
        plan = run_cycle(make_snapshot(nodes, reserved, [job]), SchedulerConfig(), state=state)
        assert _nodes_of(plan) == {"n1"}


def test_the_memo_forgets_shapes_that_left_after_one_cycle() -> None:
    """The memo is about the backlog's distinct shapes, not every job or shape ever seen (a
    long-running operator): four cycles, each with 50 jobs of a shape nobody asked for before."""
    nodes = [make_node("n0", 8)]
    state = ClusterState.from_nodes(nodes)
    queues = [make_queue("a", quota_gpus=8)]
    for wave in range(4):
        jobs = [make_job(f"w{wave}-{i}", "a", 1, cpu_milli=10_000_000 + wave) for i in range(50)]  # no CPU for them
        run_cycle(make_snapshot(nodes, queues, jobs), SchedulerConfig(), state=state)
    remembered = [key for part in state.request_cache.values() if isinstance(part, dict) for key in part]
    # the last two waves' one shape each (index 3 of `Job.request_key` is the CPU asked for)
    assert sorted(job_key[3] for job_key, _, _ in remembered) == [10_000_002, 10_000_003]


def test_jobs_of_one_shape_share_a_request_and_each_keeps_its_own_reason() -> None:
    """One request per shape; a reason that comes with the request (a pool the queue may not use)
    still names each job."""
    nodes = [make_node("n0", 8, pool="shared"), make_node("n1", 8, pool="research")]
    queues = [make_queue("a", quota_gpus=16, pool="research")]
    jobs = [make_job(f"j{i}", "a", 8, pool="shared") for i in range(3)]
    plan = run_cycle(make_snapshot(nodes, queues, jobs), SchedulerConfig())
    assert [(p.job_id, p.code) for p in plan.pending] == [(f"j{i}", "PoolNotAllowed") for i in range(3)]


def test_a_reason_built_instead_of_a_request_names_each_jobs_own_queue() -> None:
    """Two open queues, one reserved pool: jobs of one shape from both queues ask for the pool; each
    reason names the job's own queue (the memo of requests is shared by shape, not across queues)."""
    nodes = [make_node("n0", 8, pool="shared"), make_node("n1", 8, pool="research")]
    queues = [make_queue(q, quota_gpus=8) for q in "ab"] + [make_queue("r", quota_gpus=8, pool="research")]
    jobs = [make_job("ja", "a", 8, pool="research"), make_job("jb", "b", 8, pool="research")]
    plan = run_cycle(make_snapshot(nodes, queues, jobs), SchedulerConfig())
    messages = {p.job_id: p.message for p in plan.pending}
    assert "queue a may not use it" in messages["ja"] and "queue b may not use it" in messages["jb"], messages
