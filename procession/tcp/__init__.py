"""
The TCP front ends: the native worker protocol (one frame a line,
C{protocol}) and Faktory's worker protocol (C{faktory}, with the job
mapping in C{faktory_job}).  Each translates its wire into calls of
L{procession.service}.
"""
