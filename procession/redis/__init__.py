"""
Talking to Redis, and nothing about jobs: addresses and URLs, connections,
Sentinel, the pub/sub wake-up listener, and the embedded redis-server that
procession runs when no Redis is named; the private parts of txredisapi it
relies on are in one place (L{procession.redis.internals}).
"""
