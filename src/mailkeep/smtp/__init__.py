"""Sans-IO SMTP and LMTP server core (RFC 5321, RFC 2033 and the extensions listed in
``server``).

The adapter feeds bytes to a ``ServerConnection``, pulls events with ``next_event()``,
answers decisions with ``accept``/``reject``/``lmtp_replies``/``auth_challenge`` and writes
``data_to_send()``. Modules: ``reply`` (reply values and the standard catalogue),
``address`` (envelope address grammar and canonical names), ``params`` (MAIL/RCPT
parameters, xtext), ``data`` (DATA/BDAT content readers), ``server`` (the state machine).
"""

from .address import (
    Address,
    AddressError,
    canonical_address,
    canonical_domain,
    parse_address,
    parse_path,
)
from .params import MailParams, ParamError, RcptParams, xtext_decode, xtext_encode
from .reply import Reply
from .server import (
    NEED_DATA,
    AuthResponse,
    AuthStart,
    BodyData,
    BodyEnd,
    ClientError,
    ConnectionClosed,
    DataStart,
    Event,
    Hello,
    MailFrom,
    NeedData,
    Quit,
    RcptTo,
    Reset,
    ServerConnection,
    SessionConfig,
    StartTLS,
    State,
    Transaction,
    UsageError,
)

__all__ = [
    "NEED_DATA",
    "Address",
    "AddressError",
    "AuthResponse",
    "AuthStart",
    "BodyData",
    "BodyEnd",
    "ClientError",
    "ConnectionClosed",
    "DataStart",
    "Event",
    "Hello",
    "MailFrom",
    "MailParams",
    "NeedData",
    "ParamError",
    "Quit",
    "RcptParams",
    "RcptTo",
    "Reply",
    "Reset",
    "ServerConnection",
    "SessionConfig",
    "StartTLS",
    "State",
    "Transaction",
    "UsageError",
    "canonical_address",
    "canonical_domain",
    "parse_address",
    "parse_path",
    "xtext_decode",
    "xtext_encode",
]
