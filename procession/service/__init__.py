"""
The queue service: the one Deferred-based API that every front end calls.
It dispatches jobs to waiting consumers (dispatcher), coalesces acks
(coalescer), keeps the cluster's heartbeat and releases the jobs of
servers that died (cluster), and serves the operator's management and
statistics (admin), and the leases that worker processes own across
connections and servers (owners, for the Faktory listener).  Front ends never call the store themselves.
"""
