"""`model.pending_reason`, the hot paths' way to make a `PendingReason`: the same object the
dataclass makes, as long as the dataclass's `__init__` does nothing more than set its fields."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leitstand.scheduler.model import JobId, PendingReason, pending_reason


@given(st.text(), st.text(), st.text())
def test_the_factory_makes_what_the_constructor_makes(job_id: str, code: str, message: str) -> None:
    made, built = pending_reason(JobId(job_id), code, message), PendingReason(JobId(job_id), code, message)
    assert type(made) is PendingReason
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    assert (made.job_id, made.code, made.message) == (job_id, code, message)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.code = "other"  # type: ignore[misc]


def test_the_constructor_does_nothing_the_factory_skips() -> None:
    """The factory sets the three slots and skips `__init__`: a `__post_init__` (validation, derived
    fields) or a new field would be skipped too, so this fails first."""
    assert not hasattr(PendingReason, "__post_init__")
    assert [f.name for f in dataclasses.fields(PendingReason)] == ["job_id", "code", "message"]
    assert PendingReason.__slots__ == ("job_id", "code", "message")


def test_a_plans_reasons_are_made_when_read_and_say_what_was_recorded() -> None:
    """`PendingReasons`: every job of the snapshot not left out, in snapshot order; a reason given as a
    bare code and message (a shape's placement failure, shared by its jobs) becomes the job's own
    `PendingReason`; a job with nothing recorded is NotScheduled. Read again, the same objects; equal to
    the tuple of those reasons, and to another `PendingReasons` with them."""
    from builders import make_job

    from leitstand.scheduler.model import NOT_SCHEDULED, PendingReasons, reasons_by_job
    from leitstand.scheduler.placement import Unplaceable

    jobs = [make_job(f"j{i}", "a", 1) for i in range(5)]
    shared = Unplaceable("Insufficient", "1 × 1 GPU does not fit")
    own = PendingReason(JobId("j3"), "QueueAtLimit", "queue a is at its limit")
    why = {JobId("j0"): shared, JobId("j2"): shared, JobId("j3"): own}
    reasons = PendingReasons(jobs, {JobId("j1")}, why)
    expected = (
        PendingReason(JobId("j0"), "Insufficient", "1 × 1 GPU does not fit"),
        PendingReason(JobId("j2"), "Insufficient", "1 × 1 GPU does not fit"),
        own,
        PendingReason(JobId("j4"), NOT_SCHEDULED.code, NOT_SCHEDULED.message),
    )

    def read(pending: PendingReasons | tuple[PendingReason, ...]) -> list[tuple[str, str, str]]:
        return [(job_id, why.code, why.message) for job_id, why in reasons_by_job(pending)]

    texts = [(r.job_id, r.code, r.message) for r in expected]
    assert read(reasons) == texts  # read without making the reasons
    assert reasons._made is None
    why[JobId("j4")] = shared  # recorded before the first read of the reasons: read as it is then
    expected = (*expected[:3], PendingReason(JobId("j4"), "Insufficient", "1 × 1 GPU does not fit"))
    assert reasons == expected and read(reasons) == read(expected)
    assert len(reasons) == 4 and reasons[2] is own and reasons[-1] == expected[-1]
    assert list(reasons) == list(expected) and reasons[1:3] == expected[1:3]
    assert all(a is b for a, b in zip(reasons, reasons, strict=True))  # made once
    why.clear()  # made once: what they were made from is not read again
    assert reasons == expected
    again = {JobId("j0"): shared, JobId("j2"): shared, JobId("j3"): own, JobId("j4"): shared}
    assert reasons == PendingReasons(jobs, {JobId("j1")}, again)
    assert reasons != expected[:3]
    assert PendingReasons(jobs, {j.id for j in jobs}, {}) == ()


def test_a_rigid_job_without_an_entry_waits_with_its_request_s_failure() -> None:
    """Allocate leaves the jobs of a suspended FIFO out of the reasons it records (`_lone_queue`):
    `PendingReasons` gives a rigid job without an entry the failure listed for its (queue, request
    key), read and made alike; an entry of its own wins; an elastic job, a job whose pair is not
    listed and a plan without the listing fall back to NotScheduled."""
    import dataclasses as dc

    from builders import make_job

    from leitstand.scheduler.model import NOT_SCHEDULED, PendingReasons, reasons_by_job
    from leitstand.scheduler.placement import Unplaceable

    small = [make_job(f"s{i}", "a", 1) for i in range(3)]
    other_queue = make_job("q", "b", 1)
    elastic = dc.replace(make_job("e", "a", 1, 2), min_replicas=1)
    large = make_job("l", "a", 2)
    jobs = [*small, other_queue, elastic, large]
    failed = Unplaceable("Insufficient", "1 × 1 GPU does not fit")
    own = PendingReason(JobId("s1"), "QueueAtLimit", "queue a is at its limit")
    behind = {(small[0].queue, small[0].request_key): failed}
    reasons = PendingReasons(jobs, {JobId("s2")}, {JobId("s1"): own}, behind)
    expected = [
        ("s0", "Insufficient", failed.message),
        ("s1", "QueueAtLimit", own.message),
        ("q", NOT_SCHEDULED.code, NOT_SCHEDULED.message),
        ("e", NOT_SCHEDULED.code, NOT_SCHEDULED.message),
        ("l", NOT_SCHEDULED.code, NOT_SCHEDULED.message),
    ]
    assert [(j, w.code, w.message) for j, w in reasons_by_job(reasons)] == expected
    assert [(r.job_id, r.code, r.message) for r in reasons] == expected
    assert reasons[0] == PendingReason(JobId("s0"), "Insufficient", failed.message)
    without = PendingReasons(jobs, {JobId("s2")}, {JobId("s1"): own})
    assert [r.code for r in without] == [NOT_SCHEDULED.code, "QueueAtLimit"] + [NOT_SCHEDULED.code] * 3


def test_fifo_keys_are_equal_exactly_for_equal_requests_and_are_made_anew_when_loaded() -> None:
    """`Job.fifo_key` is a number of this process: equal for jobs allocate may treat alike (request
    key, preemptibility, min_replicas), different otherwise, and a pickled or copied job is made
    anew, so it carries the number this process gives its values — never another's, which could be
    the number of a different request here."""
    import copy
    import dataclasses as dc
    import pickle

    from builders import make_job

    from leitstand.scheduler import model

    a = make_job("a", "q", 1, created_at=1.0)
    twin = make_job("b", "other", 1, created_at=2.0, priority=60)  # queue, age and id are not in the key
    assert a.fifo_key == twin.fifo_key
    different = [
        make_job("c", "q", 2),
        make_job("d", "q", 1, preemptible=False),
        dc.replace(make_job("e", "q", 1, 2), min_replicas=1),
        make_job("f", "q", 1, cpu_milli=500),
    ]
    keys = {a.fifo_key, *(j.fifo_key for j in different)}
    assert len(keys) == 1 + len(different)
    data = pickle.dumps(a)
    given = set(model._FIFO_KEYS.values())
    model._FIFO_KEYS.clear()  # as in a process that never saw `a`'s value: it gets a new number
    fresh = make_job("g", "q", 8)  # a value that could take `a`'s old number if numbers were reused
    loaded = pickle.loads(data)
    assert loaded == a and loaded.order_key == a.order_key and loaded.request_key == a.request_key
    assert fresh.fifo_key not in given and loaded.fifo_key not in given | {fresh.fifo_key}
    assert loaded.fifo_key == make_job("h", "q", 1).fifo_key
    for copied in (copy.copy(loaded), copy.deepcopy(loaded)):
        assert copied == loaded and copied.fifo_key == loaded.fifo_key
