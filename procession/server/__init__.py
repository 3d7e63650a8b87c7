"""
Start-up wiring for C{twist procession}: the command-line options and the
service (C{tap}), the parts it is made of, each starting and stopping
itself in order (C{parts}), and several processes on one host
(C{processes}).
"""
