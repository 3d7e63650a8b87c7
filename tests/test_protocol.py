"""
End-to-end tests of the TCP worker protocol: a real server in this
process, real sockets, a real Redis.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.client import ServerFixture


def sleep(seconds: float) -> defer.Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class HandshakeTests(TestCase):
    async def setUp(self) -> None:
        self.server = await ServerFixture(self).start()

    async def test_hi(self) -> None:
        client = await self.server.connect(worker=None)
        hi = await client.hi
        self.assertEqual(hi["server"], "procession")
        self.assertEqual(hi["protocol"], 1)
        self.assertFalse(hi["auth"])

    async def test_hello_first(self) -> None:
        client = await self.server.connect(worker=None)
        kind, body = await client.send("PUSH", {"type": "t"})
        self.assertEqual((kind, body["code"]), ("ERR", "out_of_order"))
        self.assertEqual(await client.send("PING"), ("OK", None))
        reply = await client.ok("HELLO", {"worker": "w"})
        self.assertTrue(reply["worker"].startswith("w#"))
        kind, body = await client.send("HELLO", {"worker": "w"})
        self.assertEqual(body["code"], "out_of_order")

    async def test_hello_needs_a_name(self) -> None:
        client = await self.server.connect(worker=None)
        kind, body = await client.send("HELLO", {"worker": ""})
        self.assertEqual(
            (kind, body["code"], body["field"]), ("ERR", "invalid_request", "worker")
        )


class TokenTests(TestCase):
    async def test_wrong_token_is_refused_and_closed(self) -> None:
        server = await ServerFixture(self, "--token", "s3cret").start()
        client = await server.connect(worker=None)
        self.assertTrue((await client.hi)["auth"])
        kind, body = await client.send("HELLO", {"worker": "w", "token": "nope"})
        self.assertEqual((kind, body["code"]), ("ERR", "unauthorized"))
        await client.closed
        good = await server.connect(worker="w", token="s3cret")
        self.assertEqual(await good.send("PING"), ("OK", None))


class FramingTests(TestCase):
    async def setUp(self) -> None:
        self.server = await ServerFixture(self, "--max-frame", "1000").start()
        self.client = await self.server.connect()

    async def test_errors_keep_the_connection(self) -> None:
        kind, body = await self.client.send("", raw=b"PUSH {not json")
        self.assertEqual(body["code"], "bad_frame")
        kind, body = await self.client.send("", raw=b"PUSH \xff\xfe")
        self.assertEqual(body["code"], "bad_frame")
        kind, body = await self.client.send("FROB", {})
        self.assertEqual(body["code"], "unknown_verb")
        kind, body = await self.client.send("PUSH", {"type": "t", "colour": 1})
        self.assertEqual((body["code"], body["field"]), ("invalid_job", "colour"))
        kind, body = await self.client.send("PUSH", [1])
        self.assertEqual(body["code"], "invalid_job")
        kind, body = await self.client.send("ACK", {"id": "nope"})
        self.assertEqual(body["code"], "not_held")
        kind, body = await self.client.send("READY", {"queues": ["bad name"]})
        self.assertEqual(body["code"], "invalid_request")
        self.assertEqual(await self.client.send("PING"), ("OK", None))

    async def test_carriage_return_ignored(self) -> None:
        self.assertEqual(await self.client.send("", raw=b"PING\r"), ("OK", None))

    async def test_frame_too_large_closes(self) -> None:
        kind, body = await self.client.send("PUSH", {"type": "t", "args": "x" * 2000})
        self.assertEqual((kind, body["code"]), ("ERR", "frame_too_large"))
        await self.client.closed

    async def test_pipelined_replies_in_order(self) -> None:
        frames = []
        for i in range(200):
            frames.append(json.dumps({"type": "t", "id": f"j{i}"}).encode())
        ds = [self.client.send("", raw=b"PUSH " + f) for f in frames[:-1]]
        ds.append(self.client.send("PING"))
        replies = await defer.gatherResults(ds)
        self.assertEqual(
            [r[1]["id"] for r in replies[:-1]], [f"j{i}" for i in range(199)]
        )
        self.assertEqual(replies[-1], ("OK", None))


class JobFlowTests(TestCase):
    async def setUp(self) -> None:
        self.server = await ServerFixture(self).start()
        self.client = await self.server.connect()

    async def test_push_consume_ack(self) -> None:
        pushed = await self.client.ok(
            "PUSH", {"type": "email", "args": {"to": "a@b"}, "meta": {"k": 1}}
        )
        self.assertTrue(pushed["created"])
        await self.client.ok("READY", {"queues": ["default"], "credit": 1})
        job = await self.client.next_job()
        self.assertEqual(job["id"], pushed["id"])
        self.assertEqual(
            (job["type"], job["args"], job["meta"], job["attempt"]),
            ("email", {"to": "a@b"}, {"k": 1}, 1),
        )
        self.assertEqual(
            await self.client.ok("ACK", {"id": job["id"], "result": [42]}),
            {"id": job["id"]},
        )
        stored = await self.server.store.get_job("default", job["id"])
        self.assertEqual((stored["state"], stored["result"]), ("completed", [42]))

    async def test_duplicate_push(self) -> None:
        first = await self.client.ok("PUSH", {"type": "t", "id": "same"})
        second = await self.client.ok("PUSH", {"type": "other", "id": "same"})
        self.assertEqual(
            (first, second),
            ({"id": "same", "created": True}, {"id": "same", "created": False}),
        )
        sizes = await self.server.store.queue_sizes("default")
        self.assertEqual(sizes["sizes"]["queued"], 1)

    async def test_pushb_all_or_nothing(self) -> None:
        kind, body = await self.client.send("PUSHB", [{"type": "a"}, {"type": 5}])
        self.assertEqual(
            (kind, body["code"], body["index"], body["field"]),
            ("ERR", "invalid_job", 1, "type"),
        )
        self.assertEqual((await self.server.store.queue_sizes("default"))["pushed"], 0)
        reply = await self.client.ok(
            "PUSHB", [{"type": "a", "id": "x"}, {"type": "b", "queue": "other"}]
        )
        self.assertEqual(len(reply["ids"]), 2)
        self.assertEqual(reply["ids"][0], "x")

    async def test_credit_is_respected(self) -> None:
        await self.client.ok("PUSHB", [{"type": "t", "id": str(i)} for i in range(5)])
        await self.client.ok("READY", {"queues": ["default"], "credit": 2})
        first = await self.client.next_job()
        second = await self.client.next_job()
        await sleep(0.3)
        self.assertEqual(len(self.client.jobs.pending), 0)
        await self.client.ok("ACK", {"id": first["id"]})
        third = await self.client.next_job()
        self.assertEqual([first["id"], second["id"], third["id"]], ["0", "1", "2"])

    async def test_queue_preference(self) -> None:
        await self.client.ok("PUSHB", [{"type": "t", "id": "d1"}])
        await self.client.ok("PUSHB", [{"type": "t", "id": "h1", "queue": "high"}])
        await self.client.ok("READY", {"queues": ["high", "default"], "credit": 1})
        job = await self.client.next_job()
        self.assertEqual(job["id"], "h1")
        await self.client.ok("ACK", {"id": "h1"})
        self.assertEqual((await self.client.next_job())["id"], "d1")

    async def test_push_wakes_waiting_worker(self) -> None:
        await self.client.ok("READY", {"queues": ["default"], "credit": 1})
        await sleep(0.1)
        producer = await self.server.connect("producer")
        pushed = await producer.ok("PUSH", {"type": "t"})
        job = await self.client.next_job(timeout=1)
        self.assertEqual(job["id"], pushed["id"])

    async def test_one_claim_per_push_to_a_waiting_worker(self) -> None:
        """
        A push to a queue a worker waits on is followed by one claim, sent
        behind it: not a second one for the push's own wake-up message.
        """
        await self.client.ok("READY", {"queues": ["default"], "credit": 5})
        await sleep(0.1)
        store = self.server.service.store
        claims: list[str] = []
        real_claim = store.claim

        def claim(queue: str, *args: Any, **kwargs: Any) -> Any:
            claims.append(queue)
            return real_claim(queue, *args, **kwargs)

        self.patch(store, "claim", claim)
        producer = await self.server.connect("producer")
        for i in range(20):
            pushed = await producer.ok("PUSH", {"type": "t"})
            job = await self.client.next_job(timeout=1)
            self.assertEqual(job["id"], pushed["id"])
            await self.client.ok("ACK", {"id": job["id"]})
        # One claim per push (the first push, which registers the queue
        # before it is sent, may need a second): the push's wake-up message,
        # which comes back to this server too, makes none.
        self.assertGreaterEqual(len(claims), 20)
        self.assertLessEqual(len(claims), 22)

    async def test_fail_retries_then_dies(self) -> None:
        await self.client.ok("PUSH", {"type": "t", "id": "f", "max_attempts": 2})
        await self.client.ok("READY", {"queues": ["default"], "credit": 1})
        await self.client.next_job()
        reply = await self.client.ok(
            "FAIL",
            {"id": "f", "error": {"type": "Boom", "message": "no"}, "retry_in": 0},
        )
        self.assertEqual(reply["state"], "retrying")
        job = await self.client.next_job(timeout=3)
        self.assertEqual(job["attempt"], 2)
        reply = await self.client.ok(
            "FAIL", {"id": "f", "error": {"type": "Boom", "message": "again"}}
        )
        self.assertEqual(reply, {"id": "f", "state": "dead"})
        stored = await self.server.store.get_job("default", "f")
        self.assertEqual([e["message"] for e in stored["errors"]], ["again", "no"])

    async def test_fail_without_retry(self) -> None:
        await self.client.ok("PUSH", {"type": "t", "id": "f"})
        await self.client.ok("READY", {"queues": ["default"], "credit": 1})
        await self.client.next_job()
        reply = await self.client.ok(
            "FAIL", {"id": "f", "error": {"message": "fatal"}, "retry": False}
        )
        self.assertEqual(reply["state"], "dead")

    async def test_extend(self) -> None:
        await self.client.ok("PUSH", {"type": "t", "id": "e", "timeout": 1})
        await self.client.ok("READY", {"queues": ["default"], "credit": 1})
        await self.client.next_job()
        await self.client.ok("EXTEND", {"id": "e", "seconds": 30})
        await sleep(1.5)
        self.assertEqual(await self.client.ok("ACK", {"id": "e"}), {"id": "e"})

    async def test_dropped_worker_gives_job_back(self) -> None:
        await self.client.ok("PUSH", {"type": "t", "id": "d"})
        other = await self.server.connect("other")
        await self.client.ok("READY", {"queues": ["default"], "credit": 1})
        await self.client.next_job()
        await other.ok("READY", {"queues": ["default"], "credit": 1})
        self.client.transport.abortConnection()
        job = await other.next_job(timeout=1)
        self.assertEqual((job["id"], job["attempt"]), ("d", 2))
        stored = await self.server.store.get_job("default", "d")
        self.assertEqual(stored["errors"][0]["type"], "WorkerLost")

    async def test_bye_gives_jobs_back(self) -> None:
        await self.client.ok("PUSH", {"type": "t", "id": "b"})
        await self.client.ok("READY", {"queues": ["default"], "credit": 1})
        await self.client.next_job()
        self.assertEqual(await self.client.send("BYE"), ("OK", None))
        await self.client.closed
        sizes = await self.server.store.queue_sizes("default")
        self.assertEqual((sizes["sizes"]["queued"], sizes["sizes"]["running"]), (1, 0))

    async def test_lost_lease_refuses_late_ack(self) -> None:
        await self.client.ok("PUSH", {"type": "t", "id": "l", "timeout": 0.3})
        await self.client.ok("READY", {"queues": ["default"], "credit": 1})
        await self.client.next_job()
        other = await self.server.connect("other")
        await other.ok("READY", {"queues": ["default"], "credit": 1})
        job = await other.next_job(timeout=3)
        self.assertEqual(job["attempt"], 2)
        kind, body = await self.client.send("ACK", {"id": "l"})
        self.assertEqual((kind, body["code"]), ("ERR", "lease_lost"), body)
        self.assertEqual(await other.ok("ACK", {"id": "l"}), {"id": "l"})


class ClusterTests(TestCase):
    async def test_push_on_one_server_wakes_another(self) -> None:
        one = await ServerFixture(self).start()
        two = await ServerFixture(self, ns=one.namespace).start()
        worker = await two.connect("w")
        await worker.ok("READY", {"queues": ["default"], "credit": 1})
        await sleep(0.1)
        producer = await one.connect("p")
        pushed = await producer.ok("PUSH", {"type": "t"})
        job = await worker.next_job(timeout=1)
        self.assertEqual(job["id"], pushed["id"])


class ShutdownTests(TestCase):
    async def test_quiet_then_release(self) -> None:
        server = await ServerFixture(self).start()
        client = await server.connect()
        await client.ok("PUSH", {"type": "t", "id": "s"})
        await client.ok("READY", {"queues": ["default"], "credit": 1})
        await client.next_job()
        store = server.store
        await server.stop()
        self.assertEqual(client.quiets, [{"reason": "shutdown"}])
        await client.closed
        # The server is gone but the store's Redis connection too: look with
        # a fresh server on the same namespace.
        again = await ServerFixture(self, ns=server.namespace).start()
        job = await again.store.get_job("default", "s")
        self.assertEqual(job["state"], "queued")
        del store


class HalfCloseTests(TestCase):
    async def test_replies_arrive_after_the_client_stops_sending(self) -> None:
        """
        Like C{nc -q}: requests, then end of input; every request is still
        answered before the server closes.
        """
        server = await ServerFixture(self).start()
        client = await server.connect()
        await client.ok("PUSH", {"type": "t", "id": "h"})
        await client.ok("READY", {"queues": ["default"], "credit": 1})
        await client.next_job()
        replies = [
            client.send("ACK", {"id": "h"}),
            client.send("PING"),
            client.send("BYE"),
        ]
        client.transport.loseWriteConnection()
        self.assertEqual(
            await defer.gatherResults(replies),
            [("OK", {"id": "h"}), ("OK", None), ("OK", None)],
        )
        await client.closed
        job = await server.store.get_job("default", "h")
        self.assertEqual(job["state"], "completed")
