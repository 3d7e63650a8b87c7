"""
Socket plumbing under every layer: writing to a Twisted TCP transport at
once instead of on the reactor's next turn (L{procession.net.transport}),
and the private parts of Twisted that procession relies on, in one place
(L{procession.net.internals}).
"""
