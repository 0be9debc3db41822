"""The LOGIN SASL mechanism (draft-murchison-sasl-login-00): user name, then password.

Obsolete but still what Outlook and many phones use for SMTP and IMAP. The server
prompts "Username:" and "Password:"; the client answers each with the bare string. With an
initial response (SASL-IR, RFC 4959) the first answer is the user name (draft §2). It
sends the password itself, so it is offered only on secured connections.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailkeep.sasl.common import MalformedResponse, SaslLimits, check_identity, check_password

MECHANISM = "LOGIN"
# draft-murchison-sasl-login §2: the prompts clients expect (some check the text).
USERNAME_PROMPT = b"Username:"
PASSWORD_PROMPT = b"Password:"


@dataclass(frozen=True)
class LoginCredentials:
    username: str
    password: bytes

    def __repr__(self) -> str:  # never put a password into a log or a traceback
        return f"LoginCredentials(username={self.username!r})"


class LoginExchange:
    """The server side: ``receive`` each client response, get a prompt or the credentials."""

    def __init__(self, limits: SaslLimits = SaslLimits()) -> None:
        self._limits = limits
        self._username: str | None = None
        self._started = False
        self._done = False

    def start(self, initial_response: bytes | None) -> bytes:
        """Begin; returns the prompt to send: "Username:", or "Password:" when the initial
        response carried the user name."""
        if self._started:
            raise RuntimeError("LOGIN exchange already started")
        self._started = True
        # An empty initial response ("=" in SASL-IR) carries no user name: prompt for it,
        # as clients that send "AUTH LOGIN =" expect.
        if not initial_response:
            return USERNAME_PROMPT
        result = self.receive(initial_response)
        assert isinstance(result, bytes)
        return result

    def receive(self, response: bytes) -> bytes | LoginCredentials:
        """Feed one client response: returns the next prompt, or the credentials."""
        if self._done:
            raise MalformedResponse("LOGIN exchange already finished")
        if len(response) > self._limits.max_response_bytes:
            raise MalformedResponse(f"response longer than {self._limits.max_response_bytes} bytes")
        if self._username is None:
            self._username = check_identity(response, self._limits)
            return PASSWORD_PROMPT
        self._done = True
        return LoginCredentials(self._username, check_password(response, self._limits))
