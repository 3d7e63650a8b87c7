"""
The private part of werkzeug (Klein's router) that procession relies on,
in this one module, where no public API does the same.

A werkzeug C{Map} copies its C{merge_slashes} flag into its private
matcher when it is made, and Klein makes the map: setting the public flag
afterwards does not reach the matcher.  L{keep_slashes} sets both.
tests/test_internals.py checks it on a real C{Map} of the installed
werkzeug, and fails, naming the attribute, if it is gone; setup.cfg bounds
werkzeug's version to the ones checked.
"""

from __future__ import annotations

from typing import Any

#: The private attribute of a werkzeug C{Map} that L{keep_slashes} sets a
#: flag of.
MAP_ATTRIBUTE = "_matcher"


def keep_slashes(url_map: Any) -> None:
    """
    Make a werkzeug C{Map} (already made) match paths as they are, without
    merging repeated slashes (nor redirecting to the merged path).
    """
    url_map.merge_slashes = False
    getattr(url_map, MAP_ATTRIBUTE).merge_slashes = False
