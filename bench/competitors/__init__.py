"""
The task modules that RQ, Celery and Dramatiq workers import in the
benchmark: one no-op task each, and one that records when it ran (for the
steady-latency workload).  Only imported by those workers and by
L{bench.producer}.
"""
