"""
The queue service: the one Deferred-based API that every front end calls.
It dispatches jobs to waiting consumers, coalesces acks, keeps the cluster's
heartbeat and gives back the jobs of servers that died.
"""
