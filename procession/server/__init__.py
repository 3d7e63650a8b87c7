"""
Start-up wiring for C{twist procession}: the command-line options, the
service that starts and stops every part in order, and several processes on
one host.
"""
