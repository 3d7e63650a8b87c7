"""
C{twist procession --processes N} (L{procession.server.processes}): N server
processes on one host sharing the TCP and HTTP listeners and the embedded
Redis of the first, started as a child process by each test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import urllib.request
from collections import Counter
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.test_server_process import Server, _alive
from tests.wire import WireClient


def children_of(pid: int) -> set[int]:
    """
    The live processes whose parent is C{pid}.
    """
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.add(int(entry))
    return found


def http_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


class ProcessesTests(SynchronousTestCase):
    def data_dir(self) -> str:
        path = tempfile.mkdtemp(prefix="procession-procs-")
        self.addCleanup(shutil.rmtree, path, True)
        return os.path.join(path, "data")

    def server_processes(self, server: Server, count: int) -> set[int]:
        """
        The pids of a server's other processes, once all C{count} run
        (the embedded redis-server is a child too).
        """
        assert server.process is not None
        deadline = time.monotonic() + 30
        while True:
            children = children_of(server.process.pid) - {server.redis_pid}
            if len(children) == count - 1:
                self.addCleanup(_kill_all, children)
                return children
            self.assertLess(time.monotonic(), deadline, f"children: {children}")
            time.sleep(0.1)

    def listed(self, server: Server, names: set[str]) -> list[dict[str, Any]]:
        """
        The workers listing, once it shows every connection named.
        """
        deadline = time.monotonic() + 10
        while True:
            workers = http_json(server.http_port, "/api/v1/workers")["workers"]
            if names <= {w["name"].partition("#")[0] for w in workers}:
                return workers
            self.assertLess(time.monotonic(), deadline, f"listed: {workers}")
            time.sleep(0.1)

    def test_processes_share_the_listeners(self) -> None:
        """
        With --processes 3, three processes accept connections on the same
        TCP port (the kernel spreads them), jobs pushed through any reach
        workers on every one, and one SIGTERM to the first stops them all
        cleanly, the embedded Redis last.
        """
        server = Server(self, self.data_dir(), "--processes", "3").serving()
        children = self.server_processes(server, 3)
        # Every process answers on the shared ports.
        clients = []
        for n in range(30):
            client = WireClient("127.0.0.1", server.port, timeout=5)
            self.addCleanup(client.close)
            client.hello(f"w{n}")
            client.ready(credit=5)
            clients.append(client)
        workers = self.listed(server, {f"w{n}" for n in range(30)})
        spread = Counter(w["server"] for w in workers if w["name"].startswith("w"))
        self.assertEqual(len(spread), 3, spread)
        for _ in range(10):
            self.assertEqual(http_json(server.http_port, "/healthz"), {"status": "ok"})

        # Jobs flow: pushed through every process, taken on every process.
        producer = WireClient("127.0.0.1", server.port, timeout=5)
        self.addCleanup(producer.close)
        producer.hello("producer")
        pushed: set[str] = set()
        for b in range(0, 300, 50):
            batch = [{"type": "t", "args": [n]} for n in range(b, b + 50)]
            pushed.update(producer.ok("PUSHB", batch)["ids"])
        taken: Counter[str] = Counter()
        deadline = time.monotonic() + 20
        done: set[str] = set()
        while len(done) < len(pushed):
            self.assertLess(time.monotonic(), deadline, f"{len(done)} done")
            for n, client in enumerate(clients):
                while not client.no_job(0.001):
                    job = client.next_job(1)
                    client.ok("ACK", {"id": job["id"]})
                    done.add(job["id"])
                    taken[n] += 1
        self.assertEqual(done, pushed)
        queue = http_json(server.http_port, "/api/v1/queues/default")
        self.assertEqual(queue["totals"]["processed"], 300)

        for client in clients:
            client.close()
        status, took = server.terminate(timeout=30)
        self.assertEqual(status, 0, server.output())
        self.assertLess(took, 15)
        for pid in children:
            self.assertFalse(_alive(pid), f"process {pid} outlived the server")
        assert server.redis_pid is not None
        self.assertFalse(_alive(server.redis_pid))
        output = server.output()
        self.assertEqual(output.count("procession stopped"), 3, output)
        self.assertNotIn("Traceback", output)

    def test_a_dead_process_is_replaced(self) -> None:
        """
        A child that dies is started again; a child whose parent dies stops
        by itself.
        """
        server = Server(self, self.data_dir(), "--processes", "2").serving()
        [child] = self.server_processes(server, 2)
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 20
        assert server.process is not None
        while True:
            replaced = children_of(server.process.pid) - {server.redis_pid, child}
            if replaced:
                break
            self.assertLess(time.monotonic(), deadline, "no new process")
            time.sleep(0.1)
        [again] = replaced
        self.addCleanup(_kill_all, {again})
        self.assertIn("ended", server.output())
        server.process.kill()
        server.process.wait(10)
        deadline = time.monotonic() + 10
        while _alive(again):
            self.assertLess(time.monotonic(), deadline, "the child outlived its parent")
            time.sleep(0.1)


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
