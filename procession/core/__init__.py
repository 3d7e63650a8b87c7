"""
What every layer and the client share, with no I/O: the domain errors and
their codes (one hierarchy for server and client), job values and their
validation, the job states and their groups, the wire protocol's constants
and limits, listing cursors and statistics values.  Standard library and attrs only: the client
(L{procession.client}) imports it.
"""
