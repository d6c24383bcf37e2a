"""Errors the HTTP API answers with: a status code, a one-line message that says what
to fix, and optional headers (Retry-After, WWW-Authenticate)."""
from __future__ import annotations

from ..errors import UserError


class ApiError(UserError):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


async def queued(queue, job, *, timeout: float, busy: str, slow: str, cancel=None):
    """``await queue.run(job)`` (a :class:`~.jobs.JobQueue`), with a full queue answered 429 and
    a job past ``timeout`` answered 503, both with Retry-After: "the server is busy with
    ``busy``" and "... took longer than N s; ``slow``"."""
    from .jobs import JobTimeout, QueueFull

    try:
        return await queue.run(job, timeout=timeout, **({"cancel": cancel} if cancel is not None else {}))
    except QueueFull as exc:
        raise ApiError(429, f"the server is busy with {busy}; try again in {exc.retry_after} s",
                       {"Retry-After": str(exc.retry_after)}) from None
    except JobTimeout as exc:
        raise ApiError(503, f"{slow[0]} took longer than {exc.seconds:g} s; {slow[1]}",
                       {"Retry-After": str(exc.retry_after)}) from None

