"""
procession: a fault-tolerant, fast, language-agnostic background job server.
"""

__version__ = "0.1.0"
