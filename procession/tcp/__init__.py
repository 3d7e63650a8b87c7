"""
The TCP front end: the native worker protocol (one frame a line).  It
translates its wire into calls of L{procession.service}.
"""
