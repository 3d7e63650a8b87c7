"""
QUEUE PAUSE, RESUME and REMOVE from the PyPI client "pyfaktory", for
tests/test_faktory.py: the command comes as argv[1] (pause, resume,
remove), the queues after it.  Prints {"done": command} when the server
said OK.
"""

import json
import os
import sys

from pyfaktory import Client

command, queues = sys.argv[1], sys.argv[2:]
with Client(faktory_url=os.environ["FAKTORY_URL"], role="producer") as client:
    {
        "pause": client.queue_pause,
        "resume": client.queue_unpause,
        "remove": client.queue_remove,
    }[command](queues)
print(json.dumps({"done": command}), flush=True)
