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
