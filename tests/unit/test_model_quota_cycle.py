"""Unit tests of the cycle's fair-share inputs (`actions/shares.py`): reserved pools apart, per-GPU-model
accounting and admission. The rules are in docs/fairshare.md; the scenario files
`fairshare-reserved-pool-*.yaml` and `quota-per-model-*.yaml` show them end to end."""

from __future__ import annotations

from dataclasses import replace

from builders import make_job, make_node, make_queue, make_running, make_snapshot

from leitstand.scheduler.actions.shares import OTHER_MODELS, ModelAccounting, model_options, open_shares
from leitstand.scheduler.cycle import run_cycle
from leitstand.scheduler.fairshare import build_queue_tree
from leitstand.scheduler.model import EvictionKind, JobId, ModelQuota, Node, Queue, QueueName, RunningJob
from leitstand.scheduler.state import ClusterState
from leitstand.scheduler.statement import QueueAccounting, Statement


def nodes() -> list[Node]:
    return [
        make_node("b0", model="B200"),
        make_node("b1", model="B200"),
        make_node("h0", model="H100"),
        make_node("l0", model="L40S"),
    ]


def models(queue: Queue, *entries: ModelQuota) -> Queue:
    return replace(queue, model_quotas=entries)


def statement(queues: list[Queue], running: list[RunningJob]) -> Statement:
    state = ClusterState.from_nodes(nodes())
    tree = build_queue_tree(queues)
    acc = QueueAccounting.empty(tree)
    stmt = Statement(state=state, accounting=acc)
    for held in running:
        state.allocate_job(held)
        acc.add(held.job, 1)
        stmt.running[held.job.id] = held
    return stmt


def test_without_model_quotas_the_accounting_stays_plain_and_no_model_shares() -> None:
    queues = [make_queue("a", quota_gpus=8)]
    stmt = statement(queues, [])
    shares = open_shares(build_queue_tree(queues), stmt, {}, usage_share=None)
    assert type(stmt.accounting) is QueueAccounting
    assert shares.by_model == {}
    plan = run_cycle(make_snapshot(nodes(), queues, [make_job("j", "a")]))
    assert plan.model_fair_share_milli == {}


def test_running_job_without_model_is_charged_to_the_model_it_runs_on() -> None:
    queues = [models(make_queue("a", quota_gpus=16), ModelQuota("B200", 8000), ModelQuota("H100", 8000))]
    held = make_running(make_job("r", "a", gpus=4), [("h0", [0, 1, 2, 3])])
    stmt = statement(queues, [held])
    open_shares(build_queue_tree(queues), stmt, {}, usage_share=None)
    acc = stmt.accounting
    assert isinstance(acc, ModelAccounting)
    assert acc.resolved[JobId("r")] == "H100"
    assert acc.model_allocated["H100"][QueueName("a")] == 4000
    assert acc.model_allocated["B200"][QueueName("a")] == 0
    stmt.evict(held, EvictionKind.RECLAIM, JobId("x"), "test")
    assert acc.model_allocated["H100"][QueueName("a")] == 0
    assert acc.allocated_milli[QueueName("a")] == 0


def test_model_options_skip_models_at_their_limit_and_end_with_unnamed_models() -> None:
    queues = [models(make_queue("a", quota_gpus=8), ModelQuota("B200", 0, 0), ModelQuota("H100", 8000))]
    stmt = statement(queues, [])
    shares = open_shares(build_queue_tree(queues), stmt, {}, usage_share=None)
    acc = stmt.accounting
    assert isinstance(acc, ModelAccounting)
    state = stmt.state
    assert model_options(acc, shares, state, make_job("j", "a", gpus=8)) == ("H100", OTHER_MODELS)
    assert model_options(acc, shares, state, make_job("j", "a", gpus=8, models=["B200", "H100"])) == ("H100",)


def test_limit_messages_name_the_model() -> None:
    queues = [models(make_queue("a", quota_gpus=16), ModelQuota("H100", 0, 0), ModelQuota("B200", 0, 0))]
    pending = [make_job("h", "a", models=["H100"]), make_job("any", "a", models=["H100", "B200"])]
    plan = run_cycle(make_snapshot(nodes(), queues, pending))
    reasons = {p.job_id: p for p in plan.pending}
    assert reasons[JobId("h")].code == "QueueAtLimit"
    assert "at its H100 limit 0/0 GPUs" in reasons[JobId("h")].message
    assert reasons[JobId("any")].code == "QueueAtLimit"
    assert "at its limit for every GPU model this job may use" in reasons[JobId("any")].message


def test_reserved_pool_capacity_is_measured_from_the_nodes() -> None:
    queues = [make_queue("gov", quota_gpus=8, pool="sov"), make_queue("team")]
    pool_nodes = [make_node("s0", pool="sov"), make_node("d0"), make_node("d1", schedulable=False)]
    snapshot = make_snapshot(pool_nodes, queues, [make_job("g", "gov"), make_job("t", "team", gpus=8, replicas=2)])
    plan = run_cycle(snapshot)
    assert plan.fair_share_milli == {QueueName("gov"): 8000.0, QueueName("team"): 8000.0}
