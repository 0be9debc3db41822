"""SASL authentication (RFC 4422) for IMAP, POP3 and submission.

One ``Authenticator`` per server process offers SCRAM-SHA-256(-PLUS) and SCRAM-SHA-1(-PLUS)
(RFC 5802, RFC 7677, channel binding RFC 5929 / RFC 9266), CRAM-MD5 (RFC 2195, opt-in),
and PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login) on secured connections only.
The mechanism modules are pure state machines; ``authenticator`` adds the password
checks, throttling, the login cache and logging. See docs/auth.md.
"""

from mailkeep.sasl.authenticator import Authenticator, AuthPolicy, SaslExchange
from mailkeep.sasl.common import ClientInfo, SaslLimits, SaslStep, UnsupportedMechanism

__all__ = [
    "AuthPolicy",
    "Authenticator",
    "ClientInfo",
    "SaslExchange",
    "SaslLimits",
    "SaslStep",
    "UnsupportedMechanism",
]
