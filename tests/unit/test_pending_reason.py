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
