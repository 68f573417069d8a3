"""Errors that map one-to-one onto Hub HTTP answers (status + ``X-Error-Code``).

The real clients pick their exception class from the ``X-Error-Code`` header, not from the body, so every
error the hub raises carries the code the clients expect (see ``hub_protocol.md`` §1.6).
"""

from __future__ import annotations


class HubError(Exception):
    """A request the hub refuses: ``status`` is always 4xx for conditions a retry cannot fix."""

    status = 400
    code: str | None = None

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 extra: dict | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.extra = extra or {}
        self.headers = headers or {}


class BadRequest(HubError):
    status = 400


class Unauthorized(HubError):
    status = 401
    code = "Unauthorized"


class RepoNotFound(HubError):
    status = 404
    code = "RepoNotFound"


class RevisionNotFound(HubError):
    status = 404
    code = "RevisionNotFound"


class EntryNotFound(HubError):
    status = 404
    code = "EntryNotFound"


class NotFound(HubError):
    status = 404
    code = "NotFound"


class Conflict(HubError):
    status = 409
    code = "Conflict"


class PreconditionFailed(HubError):
    status = 412


class Unprocessable(HubError):
    status = 422


class PayloadTooLarge(HubError):
    status = 413


class UnsupportedMediaType(HubError):
    status = 415


class Forbidden(HubError):
    status = 403


class InsufficientStorage(HubError):
    """The store's disk is full (ENOSPC/EDQUOT): nothing was half-written, the request can be retried later."""

    status = 507
