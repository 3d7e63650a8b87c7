"""
The operator UI: HTML pages at the root of the HTTP server, rendered on
the server from the Jinja2 templates of the top-level C{templates/} folder
(shipped in the package as C{procession/templates}); L{procession.http.ui.render}
holds what the pages show and how.

Pages read through the same service calls as the management API
(L{procession.service.admin}: summaries, listings, jobs) and change state
through the same ones;
this module only adds what a human needs on top: sessions and CSRF
tokens (L{procession.http.ui.session}), readable numbers
(L{procession.http.ui.humanize}), charts of the store's per-minute counters and
confirmation steps.  Every GET is read-only; every change is a POST that
carries a CSRF token.

L{UIRoutes} is a base of L{procession.http.site.HTTPServer}; it uses the
server's C{admin} and C{admin_token}.  Its handlers are named C{ui_*}: they
are HTML pages, not API, and C{procession/http/openapi.json} leaves them out.
docs/ui.rst describes the pages, the login and the CSRF protection.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import parse_qs, urlencode

import jinja2
from attrs import define, field, frozen
from twisted.internet import defer
from twisted.logger import Logger

from procession.http.ui import humanize
from procession.http.admin_api import queue_name
from procession.core.errors import (
    BatchNotFound,
    IllegalState,
    InvalidRequest,
    JobNotFound,
    ProcessionError,
    QueueNotFound,
    WorkerNotFound,
)
from procession.core.job import BATCH_ID, JOB_ID
from procession.core.listing import (
    decode_state_cursor,
    encode_state_cursor,
)
from procession.core.states import SIZED_STATES
from procession.service.admin import Admin
from procession.core.states import PURGEABLE
from procession.http.ui.render import (
    JOB_ACTIONS,
    LISTS,
    Chart,
    environment,
    job_url,
    list_url,
    parse_info,
    queue_url,
    redis_status,
    section_of,
    template_folder,
    to_ms,
)
from procession.http.ui.session import SESSION_LIFETIME, Signer, same_token
from procession.http.web import app, bearer, query

log = Logger()

SESSION_COOKIE = b"procession_session"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

PAGE_SIZE = 50
# The most running jobs the running page shows.
MAX_RUNNING = 1000
# The most jobs a batch's page lists.
MAX_BATCH_JOBS_SHOWN = 200
# The most jobs one bulk action on "every matching job" walks when it
# filters by type (without a type filter it runs the store's bulk scripts).
MAX_BULK_WALK = 100_000


# The notices shown after an action, named by the redirect's query
# (?notice=retried&n=3&skipped=1: n jobs changed, skipped ones could not
# be).  Only these fixed texts are shown, so a crafted link cannot put
# words on the page.
NOTICES = {
    "paused": "The queue is paused: it takes pushes but hands out no jobs.",
    "resumed": "The queue is resumed.",
    "purged": "Deleted {jobs}.",
    "retried": "Queued {jobs} to run now.",
    "killed": "Sent {jobs} to dead.",
    "deleted": "Deleted {jobs}.",
    "cancelled": "Cancelled {jobs}.",
    "quieted": "Sent QUIET to {connections}.",
    "loggedout": "You are logged out.",
}
SKIPPED = " Skipped {skipped}: they had moved on or gone."

STATIC_TYPES = {
    "ui.css": "text/css; charset=utf-8",
    "ui.js": "text/javascript; charset=utf-8",
}


# -- charts


async def _history(
    admin: Admin, queues: Sequence[str], first: int, periods: int, size: int
) -> tuple[list[int], list[int]]:
    """
    Processed and failed per period, summed over queues.
    """
    replies = await defer.gatherResults(
        [defer.ensureDeferred(admin.history(q, first, periods, size)) for q in queues],
        consumeErrors=True,
    ).addErrback(lambda f: f.value.subFailure)
    processed = [0] * periods
    failed = [0] * periods
    for reply in replies:
        for i, (p, f) in enumerate(reply):
            processed[i] += p
            failed[i] += f
    return processed, failed


async def minute_chart(admin: Admin, queues: Sequence[str], now_ms: int) -> Chart:
    """
    The last 60 minutes, the current one last.
    """
    now_minute = now_ms // 60_000
    processed, failed = await _history(admin, queues, now_minute - 59, 60, 1)
    return Chart(processed, failed, "min")


async def hour_chart(admin: Admin, queues: Sequence[str], now_ms: int) -> Chart:
    """
    The last 24 clock hours, the current (partial) one last.
    """
    now_hour = now_ms // 3_600_000
    processed, failed = await _history(admin, queues, (now_hour - 23) * 60, 24, 60)
    return Chart(processed, failed, "h")


# -- what a handler returns


@frozen
class Render:
    """
    Render a template with a context (the page's common values are added).
    """

    template: str
    context: dict[str, Any]
    status: int = 200


@frozen
class Redirect:
    """
    Send the browser elsewhere (303: the next request is a GET).
    """

    location: str


@define
class Visitor:
    """
    Who is asking: a browser with a session (and the CSRF token of its
    forms), or a client with the admin token in an Authorization header.
    """

    session: str | None
    csrf: str = ""
    bearer: bool = False


@define
class UIState:
    """
    The UI's per-server state: templates, signer and static files.
    """

    environment: jinja2.Environment
    signer: Signer
    static: dict[str, tuple[bytes, str]] = field(factory=dict)


def _form(request: Any, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{name} must be UTF-8", field=name) from None


def _in_query(request: Any, name: str) -> bool:
    """
    Whether the request's URL (not its body) has a parameter C{name}.
    """
    query = request.uri.partition(b"?")[2]
    return name.encode("ascii") in parse_qs(query, keep_blank_values=True)


def _forms(request: Any, name: str) -> list[str]:
    try:
        return [v.decode("utf-8") for v in request.args.get(name.encode("ascii"), [])]
    except UnicodeDecodeError:
        raise InvalidRequest(f"{name} must be UTF-8", field=name) from None


def safe_next(value: str | None) -> str:
    """
    Where to go after logging in: a path on this server only.
    """
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x21 for c in value)
    ):
        return "/"
    return value


def _are(n: int, state: str) -> str:
    """
    C{1 job is dead}, C{12 jobs are dead}.
    """
    return f"{humanize.plural(n, 'job')} {'is' if n == 1 else 'are'} {state}"


def _security_headers(request: Any) -> None:
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode())
    request.setHeader(b"X-Frame-Options", b"DENY")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"same-origin")
    request.setHeader(b"Cache-Control", b"no-store")


Handler = Callable[..., Awaitable[Any]]


def page(handler: Handler) -> Handler:
    """
    A GET page: the visitor must be logged in (or the UI open); the handler
    returns a L{Render} or a L{Redirect}.
    """

    @functools.wraps(handler)
    async def wrapped(self: "UIRoutes", request: Any, **kwargs: Any) -> bytes:
        _security_headers(request)
        visitor = self._visitor(request)
        if visitor is None:
            return self._redirect(
                request,
                "/login?" + urlencode({"next": request.uri.decode("utf-8", "replace")}),
            )
        return await self._respond(request, visitor, handler, kwargs)

    return wrapped


def action(handler: Handler) -> Handler:
    """
    A POST that changes state: the visitor must be logged in and the form
    must carry the session's CSRF token (a client sending the admin token
    in its Authorization header needs none: browsers never add that header
    by themselves).
    """

    @functools.wraps(handler)
    async def wrapped(self: "UIRoutes", request: Any, **kwargs: Any) -> bytes:
        _security_headers(request)
        visitor = self._visitor(request, issue=False)
        if visitor is None:
            return self._error(
                request, None, 401, "Log in first: this form needs a session."
            )
        if not visitor.bearer and (
            # Only from the form's body: a token in a URL leaks (logs,
            # Referer, history) and a link could carry it.
            _in_query(request, "csrf")
            or not self._ui().signer.csrf_valid(visitor.session, _form(request, "csrf"))
        ):
            return self._error(
                request,
                visitor,
                403,
                "This form has expired or did not come from this server "
                "(its CSRF token is missing or wrong). Go back, reload the "
                "page and try again.",
            )
        return await self._respond(request, visitor, handler, kwargs)

    return wrapped


class UIRoutes:
    """
    The operator UI's routes of L{procession.http.site.HTTPServer}.
    """

    admin: Admin
    # The queue service: its workflows (batches) for the Batches pages.
    dispatcher: Any
    admin_token: str | None
    worker_token: str | None
    _ui_state: UIState | None = None

    @property
    def ui_token(self) -> str | None:
        """
        The token the UI asks for: the admin token, or the worker token
        when it is the only one (whatever secret is configured protects
        everything).
        """
        if self.admin_token is not None:
            return self.admin_token
        return self.worker_token

    def _token_kind(self) -> dict[str, str]:
        """
        What the login page calls the token it asks for, and its option.
        """
        if self.admin_token is not None:
            return {"token_name": "admin token", "token_option": "--admin-token"}
        return {"token_name": "worker token", "token_option": "--token"}

    # -- plumbing

    def _ui(self) -> UIState:
        if self._ui_state is None:
            self._ui_state = UIState(environment(), Signer.for_token(self.ui_token))
        return self._ui_state

    def _now(self) -> float:
        return self.admin.seconds()

    def _visitor(self, request: Any, issue: bool = True) -> Visitor | None:
        """
        Who is asking, or None when they must log in first.  With no admin
        token a browser without a session gets one (to carry CSRF tokens)
        when C{issue} is set.
        """
        signer = self._ui().signer
        token = bearer(request)
        if self.ui_token is not None and token is not None:
            if same_token(token, self.ui_token):
                return Visitor(session=None, bearer=True)
        cookie = request.getCookie(SESSION_COOKIE)
        session = cookie.decode("ascii", "replace") if cookie else None
        if signer.session_valid(session, self._now()):
            assert session is not None
            return Visitor(session, signer.csrf_token(session))
        if self.ui_token is None and issue:
            session = signer.new_session(self._now())
            self._set_session(request, session)
            return Visitor(session, signer.csrf_token(session))
        return None

    def _set_session(
        self, request: Any, session: str, max_age: int = SESSION_LIFETIME
    ) -> None:
        request.addCookie(
            SESSION_COOKIE,
            session.encode("ascii"),
            path=b"/",
            max_age=str(max_age).encode("ascii"),
            secure=request.isSecure() or None,
            httpOnly=True,
            sameSite="strict",
        )

    def _redirect(self, request: Any, location: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"Location", location.encode("utf-8"))
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"See " + location.encode("utf-8") + b"\n"

    def _render(
        self,
        request: Any,
        visitor: Visitor | None,
        template: str,
        context: dict[str, Any],
        status: int = 200,
    ) -> bytes:
        ui = self._ui()
        notice = None
        code = _form(request, "notice") if request.method == b"GET" else None
        if code in NOTICES:
            n = _form(request, "n") or "0"
            skipped = _form(request, "skipped") or "0"
            if n.isdigit() and skipped.isdigit():
                notice = NOTICES[code].format(
                    jobs=humanize.plural(int(n), "job"),
                    connections=humanize.plural(int(n), "worker connection"),
                )
                if int(skipped):
                    notice += SKIPPED.format(
                        skipped=humanize.plural(int(skipped), "job")
                    )
        full = {
            "now_ms": int(self._now() * 1000),
            "csrf": visitor.csrf if visitor else "",
            "login_mode": self.ui_token is not None,
            "logged_in": visitor is not None and visitor.session is not None,
            "notice": notice,
            "path": request.path.decode("utf-8", "replace"),
            "static": self._static_url,
            "title": "",
            "section": "",
        }
        full.update(context)
        body = ui.environment.get_template(template).render(full)
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return body.encode("utf-8")

    def _error(
        self, request: Any, visitor: Visitor | None, status: int, message: str
    ) -> bytes:
        return self._render(
            request,
            visitor,
            "error.html",
            {"status": status, "message": message, "title": f"Error {status}"},
            status,
        )

    async def _respond(
        self, request: Any, visitor: Visitor, handler: Handler, kwargs: dict[str, Any]
    ) -> bytes:
        try:
            result = await handler(self, request, **kwargs)
            if isinstance(result, Redirect):
                return self._redirect(request, result.location)
            return self._render(
                request, visitor, result.template, result.context, result.status
            )
        except ProcessionError as e:
            return self._error(request, visitor, e.http_status, e.message)
        except defer.CancelledError:
            raise
        except Exception:
            log.failure(
                "Unexpected error in {method} {path}",
                method=request.method,
                path=request.path,
            )
            return self._error(
                request,
                visitor,
                500,
                "Something went wrong on the server; its log says what.",
            )

    def _static_url(self, name: str) -> str:
        return f"/static/{name}?v={self._static(name)[1]}"

    def _static(self, name: str) -> tuple[bytes, str]:
        ui = self._ui()
        if name not in ui.static:
            body = (template_folder() / "static" / name).read_bytes()
            ui.static[name] = (body, hashlib.sha256(body).hexdigest()[:12])
        return ui.static[name]

    async def _queues(self) -> list[str]:
        return await self.admin.known_queues()

    async def _known(self, name: str) -> str:
        queue_name(name)
        if name not in await self._queues():
            raise QueueNotFound(f"There is no queue {name!r}.", queue=name)
        return name

    # -- static files and login

    @app.route("/static/<name>", methods=["GET"])
    def ui_static(self, request: Any, name: str) -> bytes:
        """
        The UI's stylesheet and script (open: they hold nothing secret).
        """
        if name not in STATIC_TYPES:
            request.setResponseCode(404)
            return b"not found\n"
        body, _ = self._static(name)
        request.setHeader(b"Content-Type", STATIC_TYPES[name].encode("ascii"))
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Cache-Control", b"public, max-age=86400")
        return body

    @app.route("/login", methods=["GET"])
    def ui_login_page(self, request: Any) -> bytes:
        """
        The login form (with no admin token there is nothing to log into).
        """
        _security_headers(request)
        target = safe_next(_form(request, "next"))
        if self.ui_token is None or self._visitor(request, issue=False):
            return self._redirect(request, target)
        return self._render(
            request,
            None,
            "login.html",
            {"next": target, "failed": False, "title": "Log in", **self._token_kind()},
        )

    @app.route("/login", methods=["POST"])
    def ui_login(self, request: Any) -> bytes:
        """
        Check the admin token typed into the form and start a session.
        """
        _security_headers(request)
        target = safe_next(_form(request, "next"))
        if self.ui_token is None:
            return self._redirect(request, target)
        if not same_token(_form(request, "token"), self.ui_token):
            log.info("A UI login with a wrong token")
            return self._render(
                request,
                None,
                "login.html",
                {
                    "next": target,
                    "failed": True,
                    "title": "Log in",
                    **self._token_kind(),
                },
                401,
            )
        self._set_session(request, self._ui().signer.new_session(self._now()))
        return self._redirect(request, target)

    @app.route("/logout", methods=["POST"])
    @action
    async def ui_logout(self, request: Any) -> Redirect:
        """
        End the session in this browser.
        """
        self._set_session(request, "", max_age=0)
        if self.ui_token is None:
            return Redirect("/")
        return Redirect("/login?notice=loggedout")

    @app.route("/session.json", methods=["GET"])
    def ui_session(self, request: Any) -> bytes:
        """
        Whether this browser's session is valid: the login page asks, since
        a SameSite=Strict cookie is not sent on a link from another site.
        """
        _security_headers(request)
        request.setHeader(b"Content-Type", b"application/json")
        valid = self._visitor(request, issue=False) is not None
        return json.dumps({"valid": valid}).encode("ascii")

    # -- the dashboard

    async def _dashboard(self) -> dict[str, Any]:
        admin = self.admin
        now_ms = admin.now_ms()
        summaries, totals = await admin.totals()
        queues = [s.name for s in summaries]
        charts: list[defer.Deferred[Any]] = [
            defer.ensureDeferred(minute_chart(admin, queues, now_ms)),
            defer.ensureDeferred(hour_chart(admin, queues, now_ms)),
            admin.redis_info(),
        ]
        hour, day, info = await defer.gatherResults(
            charts,
            consumeErrors=True,
        ).addErrback(lambda f: f.value.subFailure)
        t = totals.throughput
        tcp, http = totals.tcp_workers, totals.http_workers
        text = {
            "processed": humanize.count(totals.processed),
            "failed": humanize.count(totals.failed),
            "pushed": humanize.count(totals.pushed),
            "processed-rate": humanize.rate(t.processed_minute / 60),
            "failed-rate": humanize.rate(t.failed_minute / 60),
            "processed-rate-hour": humanize.rate(t.processed_hour / 60),
            "failed-rate-hour": humanize.rate(t.failed_hour / 60),
            "latency": humanize.duration(totals.latency),
            "queues": humanize.count(totals.queues),
            "workers": humanize.count(tcp + http),
            "workers-detail": f"{humanize.count(tcp)} TCP, {humanize.count(http)} HTTP",
            "updated": humanize.utc(now_ms),
        }
        for state in SIZED_STATES:
            text[state] = humanize.count(totals.sizes[state])
        text.update(hour.text("hour"))
        text.update(day.text("day"))
        text.update(redis_status(parse_info(info), now_ms))
        points = {**hour.points("hour"), **day.points("day")}
        return {"text": text, "points": points, "hour": hour, "day": day}

    @app.route("/", methods=["GET"])
    @page
    async def ui_dashboard(self, request: Any) -> Render:
        """
        Totals, rates, charts, workers and Redis at a glance.
        """
        view = await self._dashboard()
        return Render(
            "dashboard.html", {**view, "title": "Dashboard", "section": "dashboard"}
        )

    @app.route("/dashboard.json", methods=["GET"])
    async def ui_dashboard_json(self, request: Any) -> bytes:
        """
        The dashboard's numbers, formatted, for its live refresh.
        """
        _security_headers(request)
        request.setHeader(b"Content-Type", b"application/json")
        if self._visitor(request, issue=False) is None and self.ui_token is not None:
            request.setResponseCode(401)
            return b'{"error":"log in"}'
        try:
            view = await self._dashboard()
        except ProcessionError as e:
            request.setResponseCode(e.http_status)
            return json.dumps({"error": e.message}).encode("utf-8")
        return json.dumps({"text": view["text"], "points": view["points"]}).encode(
            "utf-8"
        )

    # -- queues

    @app.route("/queues", methods=["GET"])
    @page
    async def ui_queues(self, request: Any) -> Render:
        """
        Every queue: sizes, latency, throughput, paused.
        """
        summaries = await self.admin.summaries()
        return Render(
            "queues.html",
            {
                "queues": summaries,
                "states": SIZED_STATES,
                "title": "Queues",
                "section": "queues",
            },
        )

    @app.route("/queues/<name>", methods=["GET"])
    @page
    async def ui_queue(self, request: Any, name: str) -> Render:
        """
        One queue, its chart and its actions.
        """
        await self._known(name)
        summary = await self.admin.summary(name)
        chart = await minute_chart(self.admin, [name], self.admin.now_ms())
        limits = await self.admin.limit_status(name)
        return Render(
            "queue.html",
            {
                "queue": summary,
                "limits": limits,
                "states": SIZED_STATES,
                "purgeable": PURGEABLE,
                "hour": chart,
                "title": f"Queue {name}",
                "section": "queues",
            },
        )

    @app.route("/queues/<name>/pause", methods=["POST"])
    @action
    async def ui_pause(self, request: Any, name: str) -> Redirect:
        """
        Pause a queue.
        """
        await self._known(name)
        await self.admin.set_paused(name, True)
        return Redirect(queue_url(name) + "?notice=paused")

    @app.route("/queues/<name>/resume", methods=["POST"])
    @action
    async def ui_resume(self, request: Any, name: str) -> Redirect:
        """
        Resume a queue.
        """
        await self._known(name)
        await self.admin.set_paused(name, False)
        return Redirect(queue_url(name) + "?notice=resumed")

    def _purge_state(self, request: Any) -> str:
        state = _form(request, "state")
        if state not in PURGEABLE:
            raise InvalidRequest(
                f"Choose one of: {', '.join(PURGEABLE)}.", field="state"
            )
        return state

    @app.route("/queues/<name>/purge", methods=["GET"])
    @page
    async def ui_purge_confirm(self, request: Any, name: str) -> Render:
        """
        Ask before deleting every job of one state from a queue.
        """
        await self._known(name)
        state = self._purge_state(request)
        summary = await self.admin.summary(name)
        return Render(
            "confirm.html",
            {
                "title": "Purge?",
                "section": "queues",
                "question": f"Delete every {state} job of queue {name}?",
                "detail": f"{_are(summary.sizes[state], state)} now. "
                "They are gone for good, with their error histories.",
                "target": queue_url(name) + "/purge",
                "fields": {"state": state},
                "button": f"Delete every {state} job",
                "back": queue_url(name),
                "danger": True,
            },
        )

    @app.route("/queues/<name>/purge", methods=["POST"])
    @action
    async def ui_purge(self, request: Any, name: str) -> Redirect:
        """
        Delete every job of one state from a queue (after the confirmation).
        """
        await self._known(name)
        state = self._purge_state(request)
        if _form(request, "confirmed") != "yes":
            raise InvalidRequest("A purge must be confirmed.")
        n = await self.admin.bulk("delete", name, state)
        return Redirect(queue_url(name) + f"?notice=purged&n={n}")

    # -- jobs

    @app.route("/running", methods=["GET"])
    @page
    async def ui_running(self, request: Any) -> Render:
        """
        Every running job, the longest-running first.
        """
        ids: list[tuple[str, str]] = []
        for queue in await self._queues():
            for job_id in await self.admin.running(queue):
                ids.append((queue, job_id))
        shown = ids[:MAX_RUNNING]
        jobs = await defer.gatherResults(
            [defer.ensureDeferred(self._maybe_job(q, i)) for q, i in shown],
            consumeErrors=True,
        ).addErrback(lambda f: f.value.subFailure)
        running = [j for j in jobs if j is not None and j["state"] == "running"]
        running.sort(key=lambda j: (to_ms(j["started_at"]) or 0, j["id"]))
        return Render(
            "running.html",
            {
                "jobs": running,
                "more": len(ids) - len(shown),
                "title": "Running",
                "section": "running",
                "refresh": True,
            },
        )

    async def _maybe_job(self, queue: str, job_id: str) -> dict[str, Any] | None:
        try:
            return await self.admin.get_job(job_id, queue)
        except JobNotFound:
            return None

    async def _list(self, request: Any, state: str) -> Render:
        queue = query(request, "queue")
        if queue is not None:
            queue_name(queue)
        job_type = query(request, "type")
        cursor = query(request, "cursor")
        jobs, position = await self.admin.state_page(
            queue,
            state,
            decode_state_cursor(cursor) if cursor is not None else None,
            PAGE_SIZE,
            job_type=job_type,
        )
        next_cursor = encode_state_cursor(position) if position is not None else None
        return Render(
            "jobs.html",
            {
                "state": state,
                "jobs": jobs,
                "queue": queue or "",
                "type": job_type or "",
                "queues": await self._queues(),
                "cursor": cursor,
                "next_url": list_url(
                    state, queue=queue, type=job_type, cursor=next_cursor
                )
                if next_cursor
                else None,
                "first_url": list_url(state, queue=queue, type=job_type),
                "bulk": [
                    a for a in ("retry", "kill", "delete") if state in JOB_ACTIONS[a]
                ],
                "title": state.capitalize(),
                "section": section_of(state),
            },
        )

    @app.route("/queued", methods=["GET"])
    @page
    async def ui_queued(self, request: Any) -> Render:
        """
        Jobs waiting for a worker.
        """
        return await self._list(request, "queued")

    @app.route("/scheduled", methods=["GET"])
    @page
    async def ui_scheduled(self, request: Any) -> Render:
        """
        Jobs waiting for their time.
        """
        return await self._list(request, "scheduled")

    @app.route("/retrying", methods=["GET"])
    @page
    async def ui_retrying(self, request: Any) -> Render:
        """
        Jobs that failed and wait for their next attempt.
        """
        return await self._list(request, "retrying")

    @app.route("/dead", methods=["GET"])
    @page
    async def ui_dead(self, request: Any) -> Render:
        """
        Jobs that used up their attempts or were killed.
        """
        return await self._list(request, "dead")

    @app.route("/jobs/<path:id>", methods=["GET"])
    @page
    async def ui_job(self, request: Any, id: str) -> Render:
        """
        Everything about one job, and the actions its state allows.
        """
        if not JOB_ID.match(id):
            raise JobNotFound(f"There is no job {id!r}.", id=id)
        job = await self.admin.get_job(id)
        actions = [a for a, states in JOB_ACTIONS.items() if job["state"] in states]
        parents = []
        for parent in job.get("after", []):
            try:
                state = (await self.admin.get_job(parent))["state"]
            except JobNotFound:
                state = None
            parents.append({"id": parent, "state": state})
        return Render(
            "job.html",
            {
                "job": job,
                "parents": parents,
                "actions": actions,
                "title": f"Job {id}",
                "section": section_of(job["state"]),
                "refresh": job["state"] in ("running", "waiting"),
            },
        )

    # -- batches (docs/workflows.rst)

    @app.route("/batches", methods=["GET"])
    @page
    async def ui_batches(self, request: Any) -> Render:
        """
        The newest batches: progress, counts, callbacks.
        """
        batches = await self.dispatcher.workflows.list_batches(PAGE_SIZE)
        return Render(
            "batches.html",
            {
                "batches": batches,
                "title": "Batches",
                "section": "batches",
                "refresh": True,
            },
        )

    @app.route("/batches/<id>", methods=["GET"])
    @page
    async def ui_batch(self, request: Any, id: str) -> Render:
        """
        One batch: its progress, counts, callbacks and jobs.
        """
        if not BATCH_ID.match(id):
            raise BatchNotFound(f"There is no batch {id!r}.", id=id)
        workflows = self.dispatcher.workflows
        batch = await workflows.get_batch(id)
        jobs = await workflows.batch_jobs(id, MAX_BATCH_JOBS_SHOWN)
        return Render(
            "batch.html",
            {
                "batch": batch,
                "jobs": jobs,
                "title": f"Batch {id}",
                "section": "batches",
                "refresh": batch["state"] != "done",
            },
        )

    async def _apply(self, verb: str, queue: str, job_id: str) -> bool:
        """
        One job action through the store's script; False when the job has
        moved on (another state) or gone.
        """
        try:
            await self.admin.job_action(verb, job_id, queue)
        except (IllegalState, JobNotFound):
            return False
        return True

    @app.route("/jobs/<path:id>", methods=["POST"])
    @action
    async def ui_job_action(self, request: Any, id: str) -> Redirect:
        """
        Retry, kill, cancel or delete one job.
        """
        verb = _form(request, "action")
        if verb not in JOB_ACTIONS:
            raise InvalidRequest("Unknown action.", field="action")
        if not JOB_ID.match(id):
            raise JobNotFound(f"There is no job {id!r}.", id=id)
        queue = await self.admin.locate(id)
        try:
            await self.admin.job_action(verb, id, queue)
        except IllegalState:
            raise IllegalState(
                f"The job is no longer in a state that allows {verb}: reload its page.",
                id=id,
            ) from None
        notice = {
            "retry": "retried",
            "kill": "killed",
            "cancel": "cancelled",
            "delete": "deleted",
        }[verb]
        if verb == "delete":
            return Redirect(queue_url(queue) + f"?notice={notice}&n=1")
        return Redirect(job_url(id) + f"?notice={notice}&n=1")

    @app.route("/jobs", methods=["POST"])
    @action
    async def ui_bulk(self, request: Any) -> Render | Redirect:
        """
        Retry, kill or delete the jobs selected on a list page, or every job
        the list's filters match (after a confirmation).
        """
        state = _form(request, "state")
        if state not in LISTS:
            raise InvalidRequest("Unknown list.", field="state")
        verb = _form(request, "action") or ""
        every = verb.endswith("_all")
        verb = verb.removesuffix("_all")
        if verb not in ("retry", "kill", "delete") or state not in JOB_ACTIONS[verb]:
            raise InvalidRequest(
                f"{verb or 'That'} does not apply to {state} jobs.", field="action"
            )
        queue = _form(request, "queue") or None
        if queue is not None:
            queue_name(queue)
        job_type = _form(request, "type") or None
        done_word = {"retry": "retried", "kill": "killed", "delete": "deleted"}[verb]
        back = {"queue": queue, "type": job_type}
        if not every:
            selected = _forms(request, "job")
            if not selected:
                raise InvalidRequest("Select some jobs first.", field="job")
            n = skipped = 0
            for item in selected[:1000]:
                q, _, job_id = item.partition("/")
                if not JOB_ID.match(job_id):
                    skipped += 1
                    continue
                if await self._apply(verb, queue_name(q), job_id):
                    n += 1
                else:
                    skipped += 1
            return Redirect(
                list_url(
                    state, **back, notice=done_word, n=str(n), skipped=str(skipped)
                )
            )
        if _form(request, "confirmed") != "yes":
            return await self._bulk_confirm(state, verb, queue, job_type)
        n, skipped = await self._bulk_all(state, verb, queue, job_type)
        return Redirect(
            list_url(state, **back, notice=done_word, n=str(n), skipped=str(skipped))
        )

    async def _bulk_confirm(
        self, state: str, verb: str, queue: str | None, job_type: str | None
    ) -> Render:
        admin = self.admin
        summaries = [await admin.summary(queue)] if queue else await admin.summaries()
        size = sum(s.sizes[state] for s in summaries)
        where = f"of queue {queue}" if queue else "of every queue"
        kind = f" of type {job_type}" if job_type else ""
        how_many = f"{_are(size, state)} {where} now" + (
            f"; only those of type {job_type} will be changed." if job_type else "."
        )
        fields = {
            "state": state,
            "action": verb + "_all",
            "queue": queue or "",
            "type": job_type or "",
        }
        phrase = {"retry": "Run now", "kill": "Kill", "delete": "Delete"}[verb]
        return Render(
            "confirm.html",
            {
                "title": "Confirm",
                "section": section_of(state),
                "question": f"{phrase} every {state} job{kind} {where}?",
                "detail": how_many,
                "target": "/jobs",
                "fields": fields,
                "button": f"{phrase} them all",
                "back": list_url(state, queue=queue, type=job_type),
                "danger": verb != "retry",
            },
        )

    async def _bulk_all(
        self, state: str, verb: str, queue: str | None, job_type: str | None
    ) -> tuple[int, int]:
        queues = [queue] if queue else await self._queues()
        if job_type is None:
            # The store's batched scripts, one queue at a time.
            n = 0
            for q in queues:
                n += await self.admin.bulk(verb, q, state)
            return n, 0
        # A type filter: walk the listing and change the jobs one by one.
        n = skipped = walked = 0
        for q in queues:
            after = None
            while walked < MAX_BULK_WALK:
                jobs, after = await self.admin.list_jobs(
                    q, after, 500, state=state, job_type=job_type
                )
                for job in jobs:
                    walked += 1
                    if await self._apply(verb, q, job["id"]):
                        n += 1
                    else:
                        skipped += 1
                if after is None:
                    break
        return n, skipped

    # -- workers

    async def _workers(self) -> list[dict[str, Any]]:
        """
        The workers of every live server, as C{GET /api/v1/workers} lists
        them (L{procession.service.admin.Admin.cluster_workers}).
        """
        return await self.admin.cluster_workers()

    @app.route("/workers", methods=["GET"])
    @page
    async def ui_workers(self, request: Any) -> Render:
        """
        The workers connected to every server and the jobs in their hands.
        """
        workers = await self._workers()
        return Render(
            "workers.html",
            {
                "workers": workers,
                "here": self.admin.server_id,
                "servers": len({w.get("server") for w in workers}),
                "title": "Workers",
                "section": "workers",
                "refresh": True,
            },
        )

    @app.route("/workers/<path:name>/quiet", methods=["POST"])
    @action
    async def ui_quiet(self, request: Any, name: str) -> Redirect:
        """
        Send QUIET to a TCP worker connection of this server (or every
        connection of a worker name): it finishes its jobs and takes no
        more.
        """
        try:
            chosen = self.admin.quiet_worker(name)
        except WorkerNotFound:
            raise WorkerNotFound(
                f"No TCP worker {name!r} is connected to this server.", name=name
            )
        return Redirect(f"/workers?notice=quieted&n={len(chosen)}")
