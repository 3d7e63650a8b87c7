"""
What every HTTP route shares: the one Klein app, JSON in and out, bearer
token checks and the mapping of domain errors to HTTP statuses.

Routes live in the classes that L{procession.http.site.HTTPServer} combines
(the worker API, the management API); they register on L{app} here, and
take C{self} as that server.
"""

from __future__ import annotations

import hmac
import io
import json
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.web import server
from twisted.web.http import RESPONSES
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound
from werkzeug.routing import PathConverter, RequestRedirect

from procession.http import internals
from procession.net.internals import parse_forms, request_line
from procession.net.transport import corked
from procession.core.json_checks import (
    MAX_DECODE_NESTING,
    decode_json,
    lone_surrogate,
    may_hold_surrogates,
    too_deep,
)
from procession.core.errors import (
    Forbidden,
    FrameTooLarge,
    InvalidRequest,
    MalformedJSON,
    MethodNotAllowed,
    NotAuthenticated,
    ProcessionError,
    RouteNotFound,
)

log = Logger()

app = Klein()


class _IdPath(PathConverter):
    """
    A path segment that may begin with "/": job ids may (C{/w1}), and
    werkzeug's own C{path} may not.
    """

    regex = ".+?"
    part_isolating = False


# A job id may begin with "/" (or hold "//"): werkzeug would answer such a
# path with a redirect to the path with its slashes merged, another job's.
internals.keep_slashes(app.url_map)
app.url_map.converters["path"] = _IdPath

WORKER = "worker"
ADMIN = "admin"


class Request(server.Request):
    """
    A request of the HTTP API or the UI.

    Its head is checked by the site's L{Gate} as soon as it has arrived,
    before the body is read: a request refused then is answered from the
    head and never stored (L{_refuse}).  A body without a length
    (chunked) is counted as it arrives, and refused past the limit.

    The API takes JSON bodies only, so its POSTs skip Twisted's look at the
    content type for form fields (made with the C{email} package: a tenth
    of an HTTP push's time); the UI's forms are parsed as usual.
    """

    refused = False
    _limit: int | None = None
    _received = 0
    _linger: Any = None

    def gotLength(self, length: int | None) -> None:
        # Twisted's HTTPChannel, with the site that made it (untyped there).
        channel: Any = self.channel
        gate = getattr(channel.site, "gate", None)
        if gate is not None:
            command, path = request_line(channel)
            error = gate.check_head(self, command, path, length)
            if error is not None:
                self.content = io.BytesIO()  # type: ignore[assignment]
                self._refuse(error)
                return
            self._limit = gate.limit(path)
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self._received += len(data)
        if self._limit is not None and self._received > self._limit:
            self._refuse(
                FrameTooLarge(
                    f"the body is over the limit of {self._limit} bytes",
                    limit=self._limit,
                )
            )
            return
        super().handleContentChunk(data)

    def write(self, data: bytes) -> None:
        # The head and the body leave together, at once (on a connection
        # that sends at once: procession.http.limits).
        with corked():
            super().write(data)

    def finish(self) -> None:
        with corked():
            super().finish()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.refused:
            return
        parse_forms(self, not path.startswith(b"/api/"))
        super().requestReceived(command, path, version)

    def _refuse(self, error: ProcessionError) -> None:
        """
        Answer C{error} from the head alone and end the connection: the
        answer is sent, then the connection's sending side is closed, and
        what the client still sends is read and dropped (closing with
        unread data would make the kernel reset the connection, which can
        destroy the answer before the client reads it) until it closes, or
        L{REFUSAL_LINGER} seconds, or L{REFUSAL_DRAIN} bytes.
        """
        self.refused = True
        # No "100 Continue" after the answer.
        self.requestHeaders.removeHeader(b"expect")
        channel: Any = self.channel
        transport: Any = channel.transport
        transport.write(refusal(error))
        drained = [0]

        def drop(data: bytes) -> None:
            drained[0] += len(data)
            if drained[0] > REFUSAL_DRAIN:
                transport.abortConnection()

        channel.dataReceived = drop
        channel.setTimeout(None)
        close_sending = getattr(transport, "loseWriteConnection", None)
        if close_sending is None:
            transport.loseConnection()
            return
        close_sending()
        clock = getattr(channel.site, "clock", None) or _reactor()
        self._linger = clock.callLater(REFUSAL_LINGER, transport.abortConnection)

    def connectionLost(self, reason: Any) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        super().connectionLost(reason)


#: How long a refused request's connection lingers, reading and dropping
#: what the client sends, before it is closed (seconds).
REFUSAL_LINGER = 2.0
#: The most bytes of a refused request's body read and dropped.
REFUSAL_DRAIN = 1 << 20


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def refusal(error: ProcessionError) -> bytes:
    """
    A complete HTTP response for a request refused from its head, with the
    JSON error body every route uses; the connection closes after it.
    """
    body = json.dumps({"error": error.as_dict()}, separators=(",", ":")).encode()
    reason = RESPONSES.get(error.http_status) or {421: b"Misdirected Request"}.get(
        error.http_status, b"Error"
    )
    head = (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n"
        b"Cache-Control: no-store\r\n"
        b"Connection: close\r\n\r\n"
    ) % (error.http_status, reason, len(body))
    return head + body


class Site(server.Site):
    """
    The HTTP server's site: L{Request}s checked by C{gate} (a
    L{procession.http.gate.Gate}) before their bodies are read, and an
    access log only when asked for (C{--http-access-log}): a line per
    request costs a tenth of a request's time, and workers make many.
    """

    def __init__(
        self,
        resource: Any,
        access_log: bool = False,
        gate: Any = None,
        clock: Any = None,
    ) -> None:
        super().__init__(resource, requestFactory=Request)
        self.access_log = access_log
        self.gate = gate
        self.clock = clock
        self.displayTracebacks = False

    def log(self, request: Any) -> None:
        if self.access_log and not getattr(request, "refused", False):
            super().log(request)


# json.dumps with separators makes an encoder per call: one, made once.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def json_response(request: Any, body: Any, status: int = 200) -> bytes:
    """
    Encode C{body} as the response, with its status and content type.
    """
    return json_text_response(request, _encode(body), status)


def json_text_response(request: Any, text: str, status: int = 200) -> bytes:
    """
    Answer with JSON that is encoded already (a job's payload).
    """
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    body = text.encode("utf-8")
    # a length, not chunks: the answer is one write, and finish adds none
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def error_response(request: Any, error: ProcessionError) -> bytes:
    """
    An error as C{{"error": {"code": ..., "message": ...}}}.
    """
    return json_response(request, {"error": error.as_dict()}, error.http_status)


def read_body(request: Any, limit: int) -> bytes:
    """
    The request's body, refused with 413 past C{limit} bytes.
    """
    length = request.getHeader(b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise FrameTooLarge(f"the body is over the limit of {limit} bytes", limit=limit)
    body = request.content.read(limit + 1)
    if len(body) > limit:
        raise FrameTooLarge(f"the body is over the limit of {limit} bytes", limit=limit)
    return body


def read_json(request: Any, limit: int, default: Any = None) -> Any:
    """
    The request's body decoded as JSON; an empty body is C{default}.
    """
    body = read_body(request, limit)
    if not body.strip():
        return default
    if too_deep(body, MAX_DECODE_NESTING):
        raise MalformedJSON(
            f"the body's JSON nests more than {MAX_DECODE_NESTING} deep",
            limit=MAX_DECODE_NESTING,
        )
    try:
        value = decode_json(body)
    except (ValueError, RecursionError):
        raise MalformedJSON("the body is not valid JSON")
    if may_hold_surrogates(body):
        path = lone_surrogate(value)
        if path is not None:
            raise MalformedJSON(
                f"{path} is not valid Unicode (a lone UTF-16 surrogate escape)",
                field=path,
            )
    return value


def query(request: Any, name: str) -> str | None:
    """
    A query parameter's first value as text, L{None} when absent or empty.
    """
    values = request.args.get(name.encode("ascii"))
    if not values or not values[0]:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{name} must be UTF-8", field=name)


def bearer(request: Any) -> str | None:
    """
    The token of an C{Authorization: Bearer} header, if any.
    """
    header = request.getHeader(b"authorization")
    if not header:
        return None
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        return None
    return token.strip().decode("utf-8", "replace")


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def authorize(
    request: Any, kind: str, worker_token: str | None, admin_token: str | None
) -> None:
    """
    Check the request's bearer token for a route of C{kind}.

    Whatever secret is configured protects everything: with both tokens,
    the admin token opens every route and the worker token only worker
    routes; with one token, that token opens every route; with none, every
    route is open (the loopback default).

    @raise NotAuthenticated: no token, or an unknown one (401).
    @raise Forbidden: a worker token on an admin route while an admin
        token is set (403).
    """
    if worker_token is None and admin_token is None:
        return
    token = bearer(request)
    if token is None:
        raise NotAuthenticated("this route needs an Authorization: Bearer token")
    if admin_token is not None and _same(token, admin_token):
        return
    if worker_token is not None and _same(token, worker_token):
        if kind == WORKER or admin_token is None:
            return
        raise Forbidden("this route needs the admin token")
    raise NotAuthenticated("the token is not valid")


def known_token(
    request: Any, worker_token: str | None, admin_token: str | None
) -> bool:
    """
    Whether the request carries a token that opens some route (or none is
    needed): what a request must show before its body is read.
    """
    if worker_token is None and admin_token is None:
        return True
    token = bearer(request)
    if token is None:
        return False
    return any(t is not None and _same(token, t) for t in (admin_token, worker_token))


def _unbound(handler: Any) -> Any:
    """
    Let an error handler serve the bare app and an app bound to a server
    instance alike: Klein passes the instance first when routes are methods
    (L{procession.http.site.HTTPServer}), and only C{(request, failure)} otherwise.
    """

    def handle(*args: Any) -> Any:
        return handler(*args[-2:])

    handle.__name__ = handler.__name__
    handle.__doc__ = handler.__doc__
    return handle


def domain_error(request: Any, failure: Any) -> bytes:
    """
    The answer to a route that failed with a L{ProcessionError}.
    """
    return error_response(request, failure.value)


def unexpected_error(request: Any, failure: Any) -> bytes:
    """
    The answer to a route that failed with any other exception: logged,
    and answered 500 C{internal}.
    """
    log.failure(
        "Unexpected error in {method} {path}",
        failure,
        method=request.method,
        path=request.path,
    )
    return error_response(request, ProcessionError("internal error"))


def failure_response(request: Any, failure: Any) -> bytes:
    """
    The answer to a route that failed, as the app's error handlers give it
    (for the worker API's hot routes, L{procession.http.hot_routes}, which
    are served without Klein).
    """
    if failure.check(ProcessionError):
        return domain_error(request, failure)
    return unexpected_error(request, failure)


@app.handle_errors(ProcessionError)
@_unbound
def _domain_error(request: Any, failure: Any) -> bytes:
    return domain_error(request, failure)


@app.handle_errors(WerkzeugNotFound)
@_unbound
def _no_route(request: Any, failure: Any) -> bytes:
    return error_response(request, RouteNotFound("no such route"))


@app.handle_errors(RequestRedirect)
@_unbound
def _redirect(request: Any, failure: Any) -> bytes:
    # Routing never redirects (no route ends with a slash, slashes are not
    # merged); should it, the path is not a route.
    return error_response(request, RouteNotFound("no such route"))


@app.handle_errors(WerkzeugMethodNotAllowed)
@_unbound
def _bad_method(request: Any, failure: Any) -> bytes:
    return error_response(request, MethodNotAllowed("method not allowed on this route"))


@app.handle_errors(Exception)
@_unbound
def _unexpected(request: Any, failure: Any) -> bytes:
    return unexpected_error(request, failure)
