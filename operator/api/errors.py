"""The read API's one error type: every refusal is a `Problem`, answered as `{"error", "detail", "field"}`.

Raised by the handlers (`app`), the validation of query and path parameters, and the caller checks
(`auth`); turned into a JSON response by the exception handlers `app` installs. Statuses: 400 for a
parameter that is wrong (`field` names it), 401 without a valid token, 403 when the caller may not
see what it asked for, 404 for an unknown name or path, 405 for a method the path does not serve,
406 for a format the endpoint cannot produce. A 5xx is never an answer to input: only 503, when the
API server cannot review a token right now or the process is not ready yet.
"""

from __future__ import annotations

from typing import Any

ERRORS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    503: "Unavailable",
}


class Problem(Exception):
    """A request the API refuses; the message says what was wrong and how to fix it."""

    def __init__(self, status: int, detail: str, field: str | None = None, *, error: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error or ERRORS.get(status, "Error")
        self.detail = detail
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail, "field": self.field}


def bad_request(field: str, detail: str) -> Problem:
    return Problem(400, detail, field)


def not_found(what: str, field: str | None = None) -> Problem:
    return Problem(404, f"{what} not found", field)


def forbidden(detail: str, field: str | None = None) -> Problem:
    return Problem(403, detail, field)
