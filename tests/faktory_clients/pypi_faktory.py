"""
The PyPI client "faktory" (faktory_worker_python) against procession's
Faktory listener, for tests/test_faktory.py: push a job that works and one
that fails, then run a worker on them until the test stops this process.
FAKTORY_URL names the server; JOB_IDS receives the pushed jobs' ids as
one JSON line on stdout; QUEUES (default: default) are the
queues the worker takes jobs from.
"""

import json
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import faktory

URL = os.environ["FAKTORY_URL"]


def add(x, y):
    print(json.dumps({"ran": x + y}), flush=True)


def explode(word):
    raise ValueError(f"it blew up on {word}")


good = uuid.uuid4().hex
bad = uuid.uuid4().hex
with faktory.connection(URL) as client:
    client.queue("add", args=(20, 22), queue="default", jid=good)
    client.queue("explode", args=("x",), queue="default", jid=bad)
print(json.dumps({"good": good, "bad": bad}), flush=True)

worker = faktory.Worker(
    faktory=URL,
    queues=os.environ.get("QUEUES", "default").split(","),
    concurrency=1,
    executor=ThreadPoolExecutor,
)
worker.register("add", add)
worker.register("explode", explode)
try:
    worker.run()
except SystemExit:
    pass
sys.exit(0)
