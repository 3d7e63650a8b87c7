"""
The PyPI client "pyfaktory" against procession's Faktory listener, for
tests/test_faktory.py: push a job that works and one that fails, then run
a consumer on them until the test stops this process.  FAKTORY_URL names
the server; the pushed jobs' ids come out as one JSON line on stdout.
"""

import json
import os
import uuid

from pyfaktory import Client, Consumer, Job, Producer

URL = os.environ["FAKTORY_URL"]


def add(x, y):
    print(json.dumps({"ran": x + y}), flush=True)


def explode(word):
    raise ValueError(f"it blew up on {word}")


with Client(faktory_url=URL, role="producer") as client:
    producer = Producer(client=client)
    good = Job(jobtype="add", args=(40, 2), queue="default", jid=uuid.uuid4().hex)
    bad = Job(jobtype="explode", args=("y",), queue="default", jid=uuid.uuid4().hex)
    producer.push(good)
    producer.push(bad)
print(json.dumps({"good": good.jid, "bad": bad.jid}), flush=True)

with Client(faktory_url=URL, role="consumer", beat_period=1) as client:
    consumer = Consumer(client=client, queues=["default"], concurrency=1)
    consumer.register("add", add)
    consumer.register("explode", explode)
    consumer.run()
