"""
What an HTTP request must pass before it is served, checked from its
head, before its body is read: the C{Host} it names, the C{Origin} of a
write, the content type of an API write, a known token when it carries a
body to the API, and the body's size.

A request that fails is answered at once from the head, with the JSON
error body of L{procession.http.web}, and its connection closed: nothing
of a refused body is kept, however long it says it is.  docs/http-api.rst
("Requests the server refuses") and docs/reliability.rst describe the
rules; this module knows nothing of routes beyond the C{/api/} prefix.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from attrs import frozen

from procession.core.errors import (
    CrossOrigin,
    FrameTooLarge,
    HostNotAllowed,
    InvalidRequest,
    NotAuthenticated,
    ProcessionError,
    UnsupportedMediaType,
)
from procession.http.web import known_token

#: The largest body of a request outside the API (the UI's forms, which
#: hold a CSRF token, a few names and at most a page of job ids).
FORM_LIMIT = 64 * 1024

#: Methods that change nothing: no Origin or content type check.
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})

_LOOPBACK_NAMES = ("localhost",)


def host_name(header: bytes) -> str:
    """
    The host of a C{Host} (or C{Origin}'s authority) without its port,
    lowercased; an IPv6 literal without its brackets.
    """
    text = header.decode("ascii", "replace").strip().lower()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    return text.rpartition(":")[0] if text.count(":") == 1 else text


def is_loopback_name(name: str) -> bool:
    """
    Whether a host name can only mean this machine: C{localhost} (and its
    subdomains) or a loopback address.
    """
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _loopback_listener(address: Any) -> bool:
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        # A Unix socket: no browser can be made to reach it by a name.
        return False
    return _loopback_address(host)


@lru_cache(maxsize=64)
def _loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _authority(value: bytes) -> str:
    """
    An Origin's C{host:port}, lowercased, with the scheme's default port
    left out (as a C{Host} header leaves it out).
    """
    parts = urlsplit(value.decode("ascii", "replace").strip().lower())
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return "?"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == default:
        return host
    return f"{host}:{port}"


def _host_authority(header: bytes) -> str:
    text = header.decode("ascii", "replace").strip().lower()
    for suffix in (":80", ":443"):
        if text.endswith(suffix) and not text.endswith("]" + suffix[1:]):
            return text[: -len(suffix)]
    return text


@frozen
class Gate:
    """
    The rules of one HTTP listener.

    @ivar worker_token: the worker token, if any.
    @ivar admin_token: the admin token, if any.
    @ivar max_body: the largest body of an API request.
    @ivar allowed_hosts: the host names requests may name besides loopback
        ones (C{--allowed-hosts}); C{*} allows any.  Requests to a loopback
        listener must name a loopback host or one of these; requests to
        another listener, one of these when any are given.
    @ivar loopback: whether the listener listens on loopback only (as its
        endpoint says; a listener on every interface is not, though some
        connections reach it over loopback); L{None}: as each connection's
        local address says.
    """

    worker_token: str | None = None
    admin_token: str | None = None
    max_body: int = 1 << 20
    allowed_hosts: frozenset[str] = frozenset()
    loopback: bool | None = None

    def limit(self, path: bytes) -> int:
        """
        The largest body a request to C{path} may carry.
        """
        return self.max_body if path.startswith(b"/api/") else FORM_LIMIT

    def check_head(
        self, request: Any, method: bytes, path: bytes, length: int | None
    ) -> ProcessionError | None:
        """
        The error a request's head earns, or L{None} to read its body and
        serve it.

        @param length: its C{Content-Length}, or L{None} when it has none
            (C{Transfer-Encoding: chunked}, or no body).
        """
        headers = request.requestHeaders
        host = headers.getRawHeaders(b"host", [None])[0]
        if host is not None and not self._host_allowed(request, host):
            return HostNotAllowed(
                "this server does not answer for that Host (see --allowed-hosts)"
            )
        try:
            unquote_to_bytes(path.partition(b"?")[0]).decode("utf-8")
        except UnicodeDecodeError:
            # Routing would answer in plain text, and log a traceback.
            return InvalidRequest("the path is not UTF-8", field="path")
        chunked = (
            b"chunked"
            in b",".join(headers.getRawHeaders(b"transfer-encoding", [])).lower()
        )
        has_body = chunked or bool(length)
        api = path.startswith(b"/api/")
        if method not in SAFE_METHODS:
            origin = headers.getRawHeaders(b"origin", [None])[0]
            if origin is not None and (
                host is None or _authority(origin) != _host_authority(host)
            ):
                return CrossOrigin("a request from another site may not change state")
            if api:
                kind = headers.getRawHeaders(b"content-type", [None])[0]
                if (kind is not None or has_body) and not _is_json(kind):
                    return UnsupportedMediaType(
                        "API requests that change state take "
                        "Content-Type: application/json"
                    )
        if api and has_body and not self._known_token(request):
            return NotAuthenticated("this route needs an Authorization: Bearer token")
        limit = self.limit(path)
        if length is not None and length > limit:
            return FrameTooLarge(
                f"the body is over the limit of {limit} bytes", limit=limit
            )
        return None

    def _host_allowed(self, request: Any, header: bytes) -> bool:
        loopback = self.loopback
        if loopback is None:
            loopback = _loopback_listener(request.getHost())
        if len(header) <= _LONGEST_CACHED_HOST:
            return _cached_host_verdict(header, self.allowed_hosts, loopback)
        return _host_verdict(header, self.allowed_hosts, loopback)

    def _known_token(self, request: Any) -> bool:
        return known_token(request, self.worker_token, self.admin_token)


def _host_verdict(header: bytes, allowed_hosts: frozenset[str], loopback: bool) -> bool:
    """
    Whether a listener (on loopback only, or not) with these
    C{--allowed-hosts} answers for a C{Host} header.
    """
    name = host_name(header)
    if "*" in allowed_hosts or name in allowed_hosts:
        return True
    if loopback or allowed_hosts:
        return is_loopback_name(name)
    return True


# Every request's Host is judged, and parsing it (an address with
# ipaddress) each time was a twentieth of an HTTP request's time: the
# verdicts of short headers are kept.  A client naming many hosts only
# cycles the cache.
_LONGEST_CACHED_HOST = 255
_cached_host_verdict = lru_cache(maxsize=1024)(_host_verdict)


def _is_json(kind: bytes | None) -> bool:
    if kind is None:
        return False
    media = kind.split(b";")[0].strip().lower()
    return media == b"application/json"


def parse_allowed_hosts(text: str | None) -> frozenset[str]:
    """
    C{--allowed-hosts}: comma-separated host names (without ports), or
    C{*} for any.
    """
    if not text:
        return frozenset()
    names = {n.strip().lower() for n in text.split(",") if n.strip()}
    return frozenset(n[1:-1] if n.startswith("[") else n for n in names)
