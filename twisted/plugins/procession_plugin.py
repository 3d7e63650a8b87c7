"""
The C{twist procession} plugin.

Imports stay inside the methods: importing the server (and with it
txredisapi) while Twisted scans plugins would install the default reactor
before C{twist --reactor} gets a say.
"""

from twisted.application.service import ServiceMaker

procession = ServiceMaker(
    "procession",
    "procession.server.tap",
    "A fault-tolerant, fast, language-agnostic background job server.",
    "procession",
)
