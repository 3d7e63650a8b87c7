"""
The operator UI's sessions and CSRF tokens: signed values, checked in
constant time.

A session cookie is C{<issued>.<nonce>.<signature>}: when it was issued
(Unix seconds), 16 random bytes, and an HMAC-SHA256 of both under a key
derived from the admin token.  It never holds the token itself, every
server that shares the admin token accepts it, and changing the token
ends every session.  With no admin token (the open, loopback default) the
key is random per process, and sessions exist only to anchor CSRF tokens.

A CSRF token is an HMAC of the session under the same key: a page from
this server carries it in its forms, and a form posted from another site
cannot know it.

Pure: no I/O; the time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from attrs import frozen

# How long a session lasts, in seconds.
SESSION_LIFETIME = 12 * 3600
# Sessions issued this far in the future are accepted (clocks of servers
# sharing a token may differ a little).
CLOCK_SKEW = 300


def _mac(key: bytes, purpose: bytes, value: str) -> str:
    return hmac.new(
        key, purpose + b"\0" + value.encode("ascii"), hashlib.sha256
    ).hexdigest()


@frozen
class Signer:
    """
    Issues and checks sessions and CSRF tokens under one key.
    """

    key: bytes
    lifetime: int = SESSION_LIFETIME

    @classmethod
    def for_token(cls, admin_token: str | None) -> "Signer":
        """
        The signer of a server: its key comes from the admin token, or is
        random when there is none.
        """
        if admin_token is None:
            return cls(os.urandom(32))
        key = hmac.new(
            admin_token.encode("utf-8"), b"procession ui session key v1", hashlib.sha256
        ).digest()
        return cls(key)

    def new_session(self, now: float) -> str:
        """
        A fresh session value.
        """
        value = f"{int(now)}.{os.urandom(16).hex()}"
        return value + "." + _mac(self.key, b"session", value)

    def session_valid(self, session: str | None, now: float) -> bool:
        """
        Whether C{session} is one of ours and has not expired.
        """
        if not session or len(session) > 200:
            return False
        value, _, signature = session.rpartition(".")
        issued, _, nonce = value.partition(".")
        if not issued.isdigit() or not nonce or not signature:
            return False
        try:
            expected = _mac(self.key, b"session", value)
        except UnicodeEncodeError:
            return False
        if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8")):
            return False
        age = now - int(issued)
        return -CLOCK_SKEW <= age < self.lifetime

    def csrf_token(self, session: str) -> str:
        """
        The CSRF token of the forms of a session.
        """
        return _mac(self.key, b"csrf", session)

    def csrf_valid(self, session: str | None, token: str | None) -> bool:
        """
        Whether C{token} is the CSRF token of C{session}.
        """
        if not session or not token:
            return False
        try:
            expected = self.csrf_token(session)
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(expected.encode("ascii"), token.encode("utf-8"))


def same_token(given: str | None, token: str) -> bool:
    """
    Whether a token from a request (a login form, a bearer header) is
    C{token}, compared in constant time.
    """
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))
