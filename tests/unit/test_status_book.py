"""The status book's order of writes: a job the API server has no status of yet is written before a
change of phase or reason, and those before message refreshes, in batches, so a wave of refreshes of
waiting jobs never keeps a new job statusless (found by `leitstand bench hostile`: with binds holding
writes to two in flight, 900 new TrainingJobs waited minutes behind refreshes)."""

from __future__ import annotations

import asyncio
from typing import Any

from leitstand.operator.service.status import StatusBook


class RecordingApiServer:
    def __init__(self) -> None:
        self.patched: list[str] = []

    async def request(self, method: str, path: str, body: Any = None, *, params: Any = None,
                      content_type: str = "application/json") -> tuple[int, Any]:
        self.patched.append(path.removesuffix("/status"))
        return 200, {}


def test_new_statuses_first_then_changes_then_refreshes_in_batches() -> None:
    api = RecordingApiServer()
    book = StatusBook(api)

    async def main() -> None:
        for i in range(6):  # six waiting jobs, written once
            book.view(f"/tj/old-{i}", f"u{i}", {}).update(phase="Pending", reason="Insufficient", message="0 of 8")
        await book.flush()
        api.patched.clear()
        for i in range(6):  # their numbers change (a refresh); one of them is admitted (a change of reason)
            status = book.view(f"/tj/old-{i}", f"u{i}", None)
            status["message"] = "2 of 8"
            if i == 5:
                status.update(phase="Running", reason="Running")
        for i in range(3):  # three jobs the API server has no status of yet
            book.view(f"/tj/new-{i}", f"n{i}", {}).update(phase="Pending", reason="UnknownQueue")
        more = await book.flush(limit=4)
        assert more
        assert sorted(api.patched[:3]) == ["/tj/new-0", "/tj/new-1", "/tj/new-2"] and api.patched[3] == "/tj/old-5"
        assert await book.flush(limit=4)  # the five refreshes: four, then one
        assert not await book.flush(limit=4)
        assert sorted(api.patched[4:]) == [f"/tj/old-{i}" for i in range(5)]
        assert not await book.flush(limit=4)
        assert len(api.patched) == 9  # nothing written twice

    asyncio.run(main())
