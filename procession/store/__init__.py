"""
The job store: every read and write of procession's state in Redis, each
change of a job's state one Lua script (C{lua/}); every key name
(C{keys}); the server registry (C{registry}); the start-up checks of
Redis (C{health}).  Only L{procession.service} calls it (start-up wiring
builds it and hands it on).
"""
