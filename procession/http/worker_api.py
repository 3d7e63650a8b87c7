"""
The HTTP worker API: push jobs, long-poll for the next one, and ack, fail
or extend it by its lease, for workers that cannot keep a TCP connection
(docs/http-api.rst, "Worker API").

A waiting long-poll is a dispatcher consumer with room for one job, woken
by pushes exactly like a TCP worker; it never polls Redis.  The lease token
names the job's queue (L{procession.service.dispatcher.new_lease}), so an ack needs
nothing but the job's id and lease.  Like every front end, these routes
speak only to the dispatcher; they check requests with the same functions
as the TCP protocol (L{procession.core.job}).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from procession.service.dispatcher import Dispatcher, lease_queue
from procession.core.errors import (
    InvalidRequest,
    ProcessionError,
    JobNotFound,
    LeaseLost,
    MethodNotAllowed,
    ShuttingDown,
)
from procession.core.job import (
    ClaimedJob,
    batch_reply,
    push_reply,
    encode_result,
    failure_reply,
    format_time,
    parse_batch,
    parse_extend_seconds,
    parse_failure,
    parse_queues,
    parse_submission,
    parse_worker_name,
)
from procession.http.web import (
    WORKER,
    app,
    authorize,
    json_response,
    json_text_response,
    query,
    read_json,
)

log = Logger()

# A shorter wait could run out before the first claim's round trip to
# Redis, and answer 204 with a job waiting.
MIN_WAIT = 0.1

# The most jobs one long-poll may take (its count parameter), and one
# batch ack may finish.
MAX_POLL_COUNT = 1000
MAX_ACK_BATCH = 1000


class Poll:
    """
    One waiting long-poll: a dispatcher consumer with room for C{count}
    jobs.

    L{result} fires with the jobs leased to it (one claim's worth, up to
    C{count}), or with L{None} when the server quiets the poll.
    Cancelling it (the client went away, or the wait ran out) takes the
    poll off the dispatcher; a job the dispatcher claimed for it after that
    is refused by L{deliver}, so the dispatcher gives it back.
    """

    # The worker may ack through any server: its lease is not this
    # server's to give back if this server dies (it expires instead).
    connection_bound = False

    def __init__(
        self, dispatcher: Dispatcher, name: str, queues: Sequence[str], count: int = 1
    ) -> None:
        self.dispatcher = dispatcher
        self.name = name
        self.queues = queues
        self.count = count
        self.jobs: list[ClaimedJob] = []
        self.finished = False
        self.quieted = False
        self.result: defer.Deferred[list[ClaimedJob] | None] = defer.Deferred(
            lambda _: self._cancelled()
        )

    def start(self) -> None:
        """
        Start taking jobs.
        """
        self.dispatcher.add_consumer(self)

    def _finish(self) -> None:
        self.finished = True
        self.dispatcher.remove_consumer(self)

    def _cancelled(self) -> None:
        # Jobs already taken are the poller's still: answer with them.
        self._finish()
        if self.jobs:
            self.result.callback(self.jobs)

    def _answer(self) -> None:
        if not self.result.called:
            self._finish()
            self.result.callback(self.jobs)

    # -- the dispatcher's consumer interface

    def room(self) -> int:
        return 0 if self.finished else self.count - len(self.jobs)

    def deliver(self, job: ClaimedJob) -> bool:
        if self.finished or self.result.called or len(self.jobs) >= self.count:
            return False
        self.jobs.append(job)
        if len(self.jobs) == self.count:
            self._answer()
        elif len(self.jobs) == 1:
            # The rest of this claim's jobs are delivered in the same
            # turn: answer with all of them after it.
            self.dispatcher.reactor.callLater(0, self._answer)
        return True

    # -- the poller registry's

    def quiet(self) -> None:
        """
        The server stops: answer now, with the jobs taken if any.
        """
        if self.finished or self.result.called:
            return
        if self.jobs:
            self._answer()
            return
        self.quieted = True
        self._finish()
        self.result.callback(None)


def _taken(result: Any, timeout: float) -> list[ClaimedJob] | None:
    """
    What a long-poll whose wait ran out took: the jobs leased to it in the
    meantime (its canceller answers with them), else nothing.
    """
    return result if isinstance(result, list) else None


def parse_count(text: str | None) -> int | None:
    """
    The C{count} parameter of a long-poll: 1 to L{MAX_POLL_COUNT}, or
    L{None} when absent (one job, answered as an object).
    """
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_POLL_COUNT:
        raise InvalidRequest(
            f"count must be a whole number from 1 to {MAX_POLL_COUNT}", field="count"
        )
    return int(text)


def parse_wait(text: str | None, cap: float) -> float:
    """
    The C{wait} parameter of a long-poll: seconds, at most C{cap}.
    """
    if text is None:
        return cap
    try:
        wait = float(text)
    except ValueError:
        wait = math.nan
    if math.isnan(wait) or wait < 0:
        raise InvalidRequest(
            "wait must be a number of seconds, 0 or more", field="wait"
        )
    return min(max(wait, MIN_WAIT), cap)


def lease_of(body: dict[str, Any], job_id: str) -> tuple[str, str]:
    """
    The lease of an ack, fail or extend body, and the queue it names.

    @raise InvalidRequest: when the body has no lease string.
    @raise LeaseLost: when the string cannot be a lease this server issued
        (so it cannot be the job's current lease either).
    """
    lease = body.get("lease")
    if not isinstance(lease, str) or not lease:
        raise InvalidRequest("lease must be the job's lease token", field="lease")
    queue = lease_queue(lease)
    if queue is None:
        raise LeaseLost(f"{lease[:64]!r} is not a lease on job {job_id!r}", id=job_id)
    return lease, queue


def request_object(request: Any, limit: int) -> dict[str, Any]:
    """
    The request's body, which must be a JSON object (empty: C{{}}).
    """
    body = read_json(request, limit, {})
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


async def lease_elsewhere(
    admin: Any, error: Exception, job_id: str, queue: str
) -> None:
    """
    A lease names its job's queue: when the job is not in that queue but
    in another, the lease cannot be the job's, and the answer is
    C{lease_lost} (409), not C{not_found}.
    """
    if not isinstance(error, JobNotFound):
        return
    try:
        other = await admin.locate(job_id)
    except JobNotFound:
        return
    if other != queue:
        raise LeaseLost(
            f"the lease names queue {queue!r}, and job {job_id!r} is in "
            f"queue {other!r}",
            id=job_id,
        )


class WorkerRoutes:
    """
    The worker routes of L{procession.http.site.HTTPServer}: C{self} is that
    server (its dispatcher, tokens, C{max_body} and C{poll_timeout}).
    """

    dispatcher: Dispatcher
    admin: Any
    worker_token: str | None
    admin_token: str | None
    max_body: int
    poll_timeout: float

    def _worker(self, request: Any) -> None:
        authorize(request, WORKER, self.worker_token, self.admin_token)

    # The push, the long poll and the ack are the worker API's hot routes:
    # procession.http.hot_routes serves them without Klein's routing, so
    # they are plain functions of the request that raise or return a
    # Deferred of the body, with callbacks rather than coroutines.

    @app.route("/api/v1/jobs", methods=["POST"])
    def worker_push(self, request: Any) -> defer.Deferred[bytes]:
        """
        Push a job (201, or 200 when its id exists), or a batch of jobs as
        a JSON array, all or nothing.
        """
        self._worker(request)
        body = read_json(request, self.max_body)
        now = self.dispatcher.now_ms()
        if isinstance(body, list):
            jobs = parse_batch(body, now, self.max_body)
            return defer.Deferred.fromCoroutine(self.dispatcher.push(jobs)).addCallback(
                _pushed_batch, request, jobs
            )
        job = parse_submission(body, now, self.max_body)
        return self.dispatcher.push_one(job).addCallback(_pushed, request, job.id)

    @app.route("/api/v1/jobs/next", methods=["GET"])
    def worker_next(self, request: Any) -> defer.Deferred[bytes]:
        """
        The long poll: one job with its lease as soon as one is leased to
        this poller, or 204 when C{wait} runs out.
        """
        self._worker(request)
        if request.method == b"HEAD":
            # A HEAD answer has no body: a job leased for it would be lost.
            raise MethodNotAllowed("use GET to take a job")
        queues = parse_queues((query(request, "queues") or "default").split(","))
        worker = query(request, "worker")
        if worker is None:
            address = request.getClientAddress()
            worker = f"http:{getattr(address, 'host', None) or 'local'}"
        worker = parse_worker_name(worker)
        wait = parse_wait(query(request, "wait"), self.poll_timeout)
        count = parse_count(query(request, "count"))
        if not self.dispatcher.accepting:
            raise ShuttingDown("the server is shutting down")

        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        poll = Poll(self.dispatcher, worker, queues, count or 1)
        pollers = self.dispatcher.pollers
        pollers.poll_started(poll)
        try:
            poll.start()
        except BaseException:
            pollers.poll_ended(poll)
            raise
        # Cancelling what this returns (Klein does, and so do the hot
        # routes, when the client goes away) cancels the poll.
        return (
            poll.result.addTimeout(
                wait, self.dispatcher.reactor, onTimeoutCancel=_taken
            )
            .addBoth(_poll_ended, pollers, poll)
            .addCallback(self._polled, request, poll, worker, count, gone)
        )

    def _polled(
        self,
        jobs: list[ClaimedJob] | None,
        request: Any,
        poll: Poll,
        worker: str,
        count: int | None,
        gone: list[bool],
    ) -> bytes:
        """
        Answer a long poll with what it took.
        """
        if not jobs:
            if poll.quieted:
                raise ShuttingDown("the server is shutting down")
            request.setResponseCode(204)
            request.setHeader(b"Cache-Control", b"no-store")
            return b""
        if gone:
            # Taken for a client that has just gone: give them back now
            # rather than when their leases expire.
            log.info(
                "{count} job(s) of queue {queue} were taken for HTTP poller "
                "{worker}, gone since: giving them back",
                count=len(jobs),
                queue=jobs[0].queue,
                worker=worker,
            )
            by_queue: dict[str, list[ClaimedJob]] = {}
            for job in jobs:
                by_queue.setdefault(job.queue, []).append(job)
            for queue, taken in by_queue.items():
                self.dispatcher.release(
                    queue, taken, "the HTTP poller went away", delivered=False
                )
            return b""
        pollers = self.dispatcher.pollers
        for job in jobs:
            pollers.handed_out(worker, job.id, job.queue, job.lease, job.timeout)
        if count is None:
            return json_text_response(request, jobs[0].payload)
        return json_text_response(
            request, "[" + ",".join(job.payload for job in jobs) + "]"
        )

    @app.route("/api/v1/jobs/<path:id>/ack", methods=["POST"])
    def worker_ack(self, request: Any, id: str) -> defer.Deferred[bytes]:
        """
        The job succeeded: C{{"lease": ..., "result": ...}}.
        """
        self._worker(request)
        body = request_object(request, self.max_body)
        lease, queue = lease_of(body, id)
        result = encode_result(body.get("result"))
        return self._settled(
            lease, self.dispatcher.ack(queue, id, lease, result), id, queue
        ).addCallback(_acked, request, id)

    @app.route("/api/v1/acks", methods=["POST"])
    async def worker_acks(self, request: Any) -> bytes:
        """
        Many jobs succeeded: a JSON array of C{{"id", "lease", "result"}}.
        Each ack stands alone: the answer has an outcome per job, in order.
        """
        self._worker(request)
        body = read_json(request, self.max_body)
        if not isinstance(body, list) or not 1 <= len(body) <= MAX_ACK_BATCH:
            raise InvalidRequest(
                f"the body must be a JSON array of 1 to {MAX_ACK_BATCH} acks"
            )
        # Check every ack before any is made: a bad one refuses the batch.
        # A lease this server cannot have issued is that ack's lease_lost.
        acks: list[tuple[str, Callable[[], defer.Deferred[Any]]]] = []
        for index, item in enumerate(body):
            try:
                if not isinstance(item, dict):
                    raise InvalidRequest("an ack must be a JSON object")
                job_id = item.get("id")
                if not isinstance(job_id, str) or not job_id:
                    raise InvalidRequest("id must be the job's id", field="id")
                result = encode_result(item.get("result"))
                try:
                    lease, queue = lease_of(item, job_id)
                except LeaseLost as e:
                    acks.append((job_id, partial(defer.fail, e)))
                    continue
            except InvalidRequest as e:
                e.details["index"] = index
                e.message = f"ack {index}: {e.message}"
                raise
            acks.append((job_id, partial(self._ack_one, job_id, lease, queue, result)))
        outcomes = await defer.DeferredList(
            [start() for _, start in acks], consumeErrors=True
        )
        results: list[dict[str, Any]] = []
        for (job_id, _), (ok, outcome) in zip(acks, outcomes):
            if ok:
                results.append({"id": job_id})
                continue
            error = outcome.value
            if not isinstance(error, ProcessionError):
                log.failure("An ack of a batch failed", outcome)
                error = ProcessionError("the ack failed")
            results.append({"id": job_id, "error": error.as_dict()})
        return json_response(request, {"results": results})

    @app.route("/api/v1/jobs/<path:id>/fail", methods=["POST"])
    async def worker_fail(self, request: Any, id: str) -> bytes:
        """
        The attempt failed: C{{"lease", "error", "retry_in", "retry"}}.
        """
        self._worker(request)
        body = request_object(request, self.max_body)
        lease, queue = lease_of(body, id)
        worker = self.dispatcher.pollers.worker_of(lease) or "http"
        report = parse_failure(body, worker, self.dispatcher.now_ms())
        state, run_at = await self._settled(
            lease,
            self.dispatcher.fail(
                queue, id, lease, report.error, report.retry_in, report.retry
            ),
            id,
            queue,
        )
        return json_response(request, failure_reply(id, state, run_at))

    @app.route("/api/v1/jobs/<path:id>/extend", methods=["POST"])
    async def worker_extend(self, request: Any, id: str) -> bytes:
        """
        Keep the lease C{seconds} more from now: C{{"lease", "seconds"}}.
        """
        self._worker(request)
        body = request_object(request, self.max_body)
        lease, queue = lease_of(body, id)
        seconds = parse_extend_seconds(body)
        try:
            expiry = await self.dispatcher.extend(queue, id, lease, seconds)
        except (LeaseLost, JobNotFound) as e:
            self.dispatcher.pollers.lease_ended(lease)
            await self._elsewhere(e, id, queue)
            raise
        self.dispatcher.pollers.lease_extended(lease, expiry / 1000)
        return json_response(request, {"id": id, "expires_at": format_time(expiry)})

    async def _elsewhere(self, error: Exception, job_id: str, queue: str) -> None:
        await lease_elsewhere(self.admin, error, job_id, queue)

    def _ack_one(
        self, job_id: str, lease: str, queue: str, result: str
    ) -> defer.Deferred[Any]:
        return self._settled(
            lease, self.dispatcher.ack(queue, job_id, lease, result), job_id, queue
        )

    def _settled(
        self, lease: str, d: defer.Deferred[Any], job_id: str, queue: str
    ) -> defer.Deferred[Any]:
        """
        An ack's or fail's outcome C{d}, once the lease is forgotten: it is
        over unless the store failed (the client may try again).  Callbacks,
        not a coroutine: the hot ack's path.
        """
        return d.addCallbacks(
            self._lease_over,
            self._lease_refused,
            callbackArgs=(lease,),
            errbackArgs=(lease, job_id, queue),
        )

    def _lease_over(self, outcome: Any, lease: str) -> Any:
        self.dispatcher.pollers.lease_ended(lease)
        return outcome

    def _lease_refused(self, failure: Any, lease: str, job_id: str, queue: str) -> Any:
        error = failure.check(LeaseLost, JobNotFound)
        if error is None:
            return failure
        self.dispatcher.pollers.lease_ended(lease)
        return defer.Deferred.fromCoroutine(
            self._elsewhere(failure.value, job_id, queue)
        ).addCallback(lambda _: failure)


def _poll_ended(result: Any, pollers: Any, poll: Poll) -> Any:
    pollers.poll_ended(poll)
    return result


def _pushed(outcome: Any, request: Any, job_id: str) -> bytes:
    return json_response(
        request, push_reply(job_id, outcome), 201 if outcome is True else 200
    )


def _pushed_batch(created: list[Any], request: Any, jobs: list[Any]) -> bytes:
    return json_response(
        request,
        batch_reply(jobs, created),
        201 if any(c is True for c in created) else 200,
    )


def _acked(_: Any, request: Any, job_id: str) -> bytes:
    return json_response(request, {"id": job_id})
