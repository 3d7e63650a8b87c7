"""
Socket plumbing under every layer: writing to a Twisted TCP transport at
once instead of on the reactor's next turn (L{procession.net.transport}).
"""
