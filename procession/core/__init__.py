"""
What every layer and the client share, with no I/O: the domain errors and
their codes, job values and their validation, the job states, listing
cursors and statistics values.  Standard library and attrs only: the client
(L{procession.client}) imports it.
"""
