"""
Tests of L{procession.http.ui.session}: sessions and CSRF tokens are signed,
expire, and are refused when changed in any way.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from procession.http.ui.session import SESSION_LIFETIME, Signer, same_token

NOW = 1_800_000_000.0


class SessionTests(SynchronousTestCase):
    def test_a_new_session_is_valid(self) -> None:
        signer = Signer.for_token("s3cret")
        session = signer.new_session(NOW)
        self.assertTrue(signer.session_valid(session, NOW))
        self.assertTrue(signer.session_valid(session, NOW + SESSION_LIFETIME - 1))

    def test_a_session_never_holds_the_token(self) -> None:
        token = "adm1n-token-value"
        session = Signer.for_token(token).new_session(NOW)
        self.assertNotIn(token, session)
        self.assertNotIn(token.encode().hex(), session)

    def test_sessions_differ(self) -> None:
        signer = Signer.for_token("s3cret")
        self.assertNotEqual(signer.new_session(NOW), signer.new_session(NOW))

    def test_expired(self) -> None:
        signer = Signer.for_token("s3cret")
        session = signer.new_session(NOW)
        self.assertFalse(signer.session_valid(session, NOW + SESSION_LIFETIME))
        # Issued far in the future: refused too.
        self.assertFalse(signer.session_valid(session, NOW - 3600))

    def test_another_token_refuses_it(self) -> None:
        session = Signer.for_token("s3cret").new_session(NOW)
        self.assertTrue(Signer.for_token("s3cret").session_valid(session, NOW))
        self.assertFalse(Signer.for_token("other").session_valid(session, NOW))

    def test_without_a_token_each_signer_is_its_own(self) -> None:
        a, b = Signer.for_token(None), Signer.for_token(None)
        session = a.new_session(NOW)
        self.assertTrue(a.session_valid(session, NOW))
        self.assertFalse(b.session_valid(session, NOW))

    def test_malformed(self) -> None:
        signer = Signer.for_token("s3cret")
        for value in [None, "", ".", "..", "x.y.z", "1.2", "é.é.é", "1" * 500]:
            self.assertFalse(signer.session_valid(value, NOW), value)

    def test_a_later_issue_time_is_refused(self) -> None:
        signer = Signer.for_token("s3cret")
        session = signer.new_session(NOW)
        issued, nonce, signature = session.split(".")
        forged = f"{int(issued) + 3600}.{nonce}.{signature}"
        self.assertFalse(signer.session_valid(forged, NOW + SESSION_LIFETIME))

    @given(
        st.integers(min_value=0),
        st.text(alphabet="0123456789abcdef.", min_size=1, max_size=3),
    )
    def test_any_change_is_refused(self, position: int, replacement: str) -> None:
        signer = Signer.for_token("s3cret")
        session = signer.new_session(NOW)
        i = position % len(session)
        changed = session[:i] + replacement + session[i + 1 :]
        if changed != session:
            self.assertFalse(signer.session_valid(changed, NOW))


class CSRFTests(SynchronousTestCase):
    def test_the_token_of_the_session(self) -> None:
        signer = Signer.for_token("s3cret")
        session = signer.new_session(NOW)
        self.assertTrue(signer.csrf_valid(session, signer.csrf_token(session)))

    def test_another_sessions_token_is_refused(self) -> None:
        signer = Signer.for_token("s3cret")
        one, two = signer.new_session(NOW), signer.new_session(NOW)
        self.assertFalse(signer.csrf_valid(one, signer.csrf_token(two)))

    def test_missing_or_wrong(self) -> None:
        signer = Signer.for_token("s3cret")
        session = signer.new_session(NOW)
        token = signer.csrf_token(session)
        for bad in [None, "", token[:-1], token + "0", token.upper(), "é" * 64]:
            self.assertFalse(signer.csrf_valid(session, bad), bad)
        self.assertFalse(signer.csrf_valid(None, token))

    def test_the_token_is_not_the_session(self) -> None:
        signer = Signer.for_token("s3cret")
        session = signer.new_session(NOW)
        self.assertNotIn(signer.csrf_token(session), session)


class SameTokenTests(SynchronousTestCase):
    def test_same_token(self) -> None:
        self.assertTrue(same_token("abc", "abc"))
        self.assertFalse(same_token("abd", "abc"))
        self.assertFalse(same_token("", "abc"))
        self.assertFalse(same_token(None, "abc"))
        self.assertTrue(same_token("é", "é"))
