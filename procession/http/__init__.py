"""
The HTTP front end: one Klein site serving the worker API, the management
API, /metrics, the OpenAPI description and the operator UI (C{ui/}).  It
calls L{procession.service} only.
"""
