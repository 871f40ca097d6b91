"""The one error hierarchy of the scheduling core.

Who raises: validation at the edges of the core (queue trees in `fairshare.py`, snapshot checks in the
cycle). Who catches: the operator, which turns an `InvalidSpecError` into a permanent error and a
condition on the offending object, and the CLI, which prints the message.

What this must not hold: "unschedulable" is a result with a reason (`model.PendingReason`), never an
exception. Only inputs that no cycle can make sense of raise.
"""

from __future__ import annotations


class LeitstandError(Exception):
    """Base of every error the core raises on purpose."""


class InvalidSpecError(LeitstandError, ValueError):
    """An input no cycle can make sense of (unknown parent queue, cycle in the queue tree, ...).

    The message names the object and the fix. Permanent: retrying with the same input fails again.
    Also a `ValueError`, so callers that only know the standard library can still catch it.
    """
