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
