"""Who may talk to the HTTP app: the API token, the Host allow-list and the same-origin rule.

:class:`Guard` is ASGI middleware in front of every route, mounted files included, so a route
added later is protected without naming it. For each HTTP request, in this order:

1. ``/healthz`` and ``/readyz`` always answer (orchestrator probes send a pod IP or any Host;
   they reveal only up/down).
2. Host allow-list (DNS rebinding): the ``Host`` header must be ``localhost``, an IP address or a
   configured name, else 421. A rebinding page always sends its own domain name as Host; an
   IP address in Host cannot be a rebinding (the browser's origin is then that address).
3. Same origin: a POST/PUT/PATCH/DELETE whose ``Origin`` is another origin (or, without
   ``Origin``, whose ``Sec-Fetch-Site`` is ``cross-site``/``same-site``) gets 403. Requests without
   either header (curl, scripts) pass.
4. Token: with a token set, everything but the page's static files (``/``, ``/static/``,
   ``/docs-assets/``) and, when ``metrics_public``, ``/metrics`` needs it, as
   ``Authorization: Bearer TOKEN``, ``X-Api-Token: TOKEN`` or HTTP Basic with the token as
   password (so a browser can open ``/docs``: its 401 asks for Basic credentials).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.responses import JSONResponse

HEALTH = frozenset({"/healthz", "/readyz"})
#: static files with no data in them: the page asks for the token and sends it on its API calls
STATIC_PREFIXES = ("/static/", "/docs-assets/")
#: where a browser navigates directly: their 401 asks for Basic credentials (token as password)
BROWSER_PAGES = frozenset({"/docs", "/docs/openapi.json", "/openapi.json"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
REALM = "UltraRes Stream"


@dataclass(frozen=True)
class AccessPolicy:
    """``token``: None = no token needed. ``allowed_hosts``: extra Host names (see :func:`host_allowed`);
    None = no Host check (an app built by a library caller; the commands always set it)."""

    token: str | None = None
    allowed_hosts: frozenset[str] | None = None
    metrics_public: bool = False

    @classmethod
    def build(cls, token: str | None, allowed_hosts, metrics_public: bool = False) -> AccessPolicy:
        hosts = None
        if allowed_hosts is not None:
            hosts = frozenset(h.lower().strip("[]") for h in (*LOOPBACK_NAMES, *allowed_hosts) if h)
        return cls(token or None, hosts, metrics_public)


def is_loopback(host: str) -> bool:
    """``host`` (a bind address or name) reaches this machine only: localhost or a loopback IP."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None]:
    """``Host``/netloc -> (lower-case name without brackets or trailing dot, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""
    return name.rstrip("."), int(port) if port.isdecimal() else None


def host_allowed(host: str, allowed: frozenset[str]) -> bool:
    """An IP address, or a name in ``allowed`` ('.example.com': it and its subdomains; '*': any)."""
    if "*" in allowed or host in allowed:
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return any(a.startswith(".") and (host == a[1:] or host.endswith(a)) for a in allowed)


def token_given(headers: dict[bytes, bytes]) -> str:
    """The token a request carries: Bearer, X-Api-Token, or the password of HTTP Basic."""
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return headers.get(b"x-api-token", b"").decode("latin-1").strip()


def cross_origin(headers: dict[bytes, bytes]) -> str | None:
    """Why a state-changing request comes from another origin, or None (same origin, or no browser)."""
    origin = headers.get(b"origin", b"").decode("latin-1").strip()
    if not origin:
        site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
        return f"Sec-Fetch-Site: {site}" if site in ("cross-site", "same-site") else None
    parts = urlsplit(origin)
    if origin == "null" or parts.scheme not in ("http", "https") or not parts.netloc:
        return f"Origin {origin}"
    default = 443 if parts.scheme == "https" else 80
    o_name, o_port = split_host(parts.netloc)
    h_name, h_port = split_host(headers.get(b"host", b"").decode("latin-1"))
    if (o_name, o_port or default) != (h_name, h_port or default):
        return f"Origin {origin}"
    return None


class Guard:
    """ASGI middleware applying an :class:`AccessPolicy` (see the module's docstring)."""

    def __init__(self, app, policy: AccessPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in HEALTH:
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)

    def refusal(self, scope) -> JSONResponse | None:
        """The answer that refuses this request, or None to let it through."""
        headers = dict(scope["headers"])
        policy, path = self.policy, scope["path"]
        if policy.allowed_hosts is not None and b"host" in headers:
            host = split_host(headers[b"host"].decode("latin-1"))[0]
            if not host_allowed(host, policy.allowed_hosts):
                return _refuse(421, f"this server does not answer to the host name {host!r}; the operator "
                                    "can add it to server.allowed_hosts")
        if scope["method"] in UNSAFE_METHODS:
            why = cross_origin(headers)
            if why is not None:
                return _refuse(403, f"cross-origin {scope['method']} refused ({why}); send it from this "
                                    "server's own page or without a browser")
        if policy.token is None or self.public(path):
            return None
        given = token_given(headers)
        if given and hmac.compare_digest(given.encode(), policy.token.encode()):
            return None
        challenge = [("WWW-Authenticate", "Bearer")]
        if path in BROWSER_PAGES:
            challenge.append(("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'))
        message = ("this server needs its API token: send 'Authorization: Bearer <token>'"
                   + (" (in a browser: any user name, the token as password)" if path in BROWSER_PAGES else ""))
        return _refuse(401, message, challenge)

    def public(self, path: str) -> bool:
        return (path == "/" or path.startswith(STATIC_PREFIXES)
                or (path == "/metrics" and self.policy.metrics_public))


def _refuse(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> JSONResponse:
    response = JSONResponse({"error": message}, status_code=status)
    for name, value in headers or []:
        response.headers.append(name, value)
    return response
