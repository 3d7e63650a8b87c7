"""
The benchmark harness of procession (issue 6): push, drain, steady latency
and HTTP workloads against procession and, on the same Redis, RQ, Celery
and Dramatiq.  ``python -m bench --help``; ``bench/README.rst`` explains it.

Nothing here is imported by the server or the client library: the package
lives beside them, in the repository only.
"""
