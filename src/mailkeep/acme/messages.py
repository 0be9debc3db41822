"""What an ACME server sends, parsed and checked (RFC 8555 §7.1), and the errors it reports.

Every object the CA returns is read into a frozen dataclass here, with its types checked,
so the client never indexes into raw JSON and a malformed answer becomes one clear
:class:`AcmeProtocolError` naming what was wrong. Problem documents (RFC 7807, with the
ACME error types of RFC 8555 §6.7) become :class:`Problem` values and, raised,
:class:`AcmeProblemError`. Nothing here does I/O.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: RFC 8555 §6.7: the namespace of ACME error types.
ERROR_NAMESPACE = "urn:ietf:params:acme:error:"

#: RFC 8555 §7.1.6: statuses after which an object no longer changes.
AUTHORIZATION_FINAL = frozenset({"valid", "invalid", "deactivated", "expired", "revoked"})
ORDER_FINAL = frozenset({"valid", "invalid"})

#: Longest detail text kept from a problem document (a CA's message, or a web page).
MAX_DETAIL = 500
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


class AcmeError(Exception):
    """Base of every ACME failure; the message says what failed, for a person."""


class AcmeUnreachable(AcmeError):
    """The CA could not be reached (DNS, connection, TLS, timeout, server error)."""


class AcmeProtocolError(AcmeError):
    """The CA answered something that is not valid ACME."""


def clean_text(text: str, limit: int = MAX_DETAIL) -> str:
    """Text from the network, safe for a log line or a terminal: one line, bounded."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Problem:
    """An RFC 7807 problem document as ACME uses it (RFC 8555 §6.7)."""

    type: str
    detail: str = ""
    status: int | None = None
    #: The identifier a subproblem is about (RFC 8555 §6.7.1), e.g. "mta-sts.example.org".
    identifier: str | None = None
    subproblems: tuple[Problem, ...] = ()

    @property
    def short_type(self) -> str:
        """The ACME error name without its URN prefix ("badNonce", "rateLimited")."""
        return self.type.removeprefix(ERROR_NAMESPACE)

    def is_type(self, name: str) -> bool:
        return self.type == ERROR_NAMESPACE + name

    def describe(self) -> str:
        text = self.short_type
        if self.detail:
            text += f": {self.detail}"
        for sub in self.subproblems:
            text += f"; {sub.identifier or '?'}: {sub.describe()}"
        return text


class AcmeProblemError(AcmeError):
    """The CA refused a request with a problem document."""

    def __init__(self, problem: Problem, context: str) -> None:
        self.problem = problem
        self.context = context
        super().__init__(f"{context}: the CA answered {problem.describe()}")


def parse_problem(body: bytes, status: int | None = None) -> Problem:
    """A problem document from a response body; never raises (a CA that sends an HTML
    error page still yields a readable Problem)."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        text = clean_text(body.decode("utf-8", "replace"), 200)
        return Problem("about:blank", f"HTTP {status}: {text}" if status else text, status)
    if not isinstance(data, Mapping):
        return Problem("about:blank", f"HTTP {status}" if status else "", status)
    return problem_from_json(data, status)


def problem_from_json(data: Mapping[str, Any], status: int | None = None,
                      depth: int = 0) -> Problem:
    kind = data.get("type")
    detail = data.get("detail")
    identifier = data.get("identifier")
    name = None
    if isinstance(identifier, Mapping) and isinstance(identifier.get("value"), str):
        name = clean_text(identifier["value"], 255)
    subs: list[Problem] = []
    raw_subs = data.get("subproblems")
    if depth == 0 and isinstance(raw_subs, list):
        subs = [problem_from_json(s, None, depth + 1) for s in raw_subs[:20]
                if isinstance(s, Mapping)]
    raw_status = data.get("status")
    return Problem(
        type=clean_text(kind, 200) if isinstance(kind, str) and kind else "about:blank",
        detail=clean_text(detail) if isinstance(detail, str) else "",
        status=raw_status if isinstance(raw_status, int) else status,
        identifier=name,
        subproblems=tuple(subs),
    )


def retry_after(value: str | None, now: datetime.datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 §10.2.3: delay-seconds or an
    HTTP-date), or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value[:10]))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    now = now or datetime.datetime.now(datetime.UTC)
    return max(0.0, (when - now).total_seconds())


# -- the objects of RFC 8555 §7.1 -------------------------------------------------------


def _object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise AcmeProtocolError(f"the CA's {what} is not a JSON object")
    return data


def _string(data: Mapping[str, Any], key: str, what: str, *, required: bool = True,
            url: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise AcmeProtocolError(f"the CA's {what} has no valid {key!r}")
    if url and not value.startswith("https://"):
        raise AcmeProtocolError(f"the CA's {what} has a {key!r} that is not an https URL: "
                                f"{clean_text(value, 200)!r}")
    return value


def _identifier(value: Any, what: str) -> str:
    # RFC 8555 §9.7.7: Mailkeep orders "dns" identifiers only.
    ident = _object(value, f"{what} identifier")
    if ident.get("type") != "dns" or not isinstance(ident.get("value"), str):
        raise AcmeProtocolError(f"the CA's {what} names an identifier that is not a DNS name")
    return ident["value"].lower()


def _problem(value: Any) -> Problem | None:
    return problem_from_json(value) if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class Directory:
    """RFC 8555 §7.1.1."""

    new_nonce: str
    new_account: str
    new_order: str
    terms_of_service: str = ""
    external_account_required: bool = False

    @classmethod
    def from_json(cls, data: Any) -> Directory:
        d = _object(data, "directory")
        meta = d.get("meta") if isinstance(d.get("meta"), Mapping) else {}
        tos = meta.get("termsOfService")
        return cls(
            new_nonce=_string(d, "newNonce", "directory", url=True),
            new_account=_string(d, "newAccount", "directory", url=True),
            new_order=_string(d, "newOrder", "directory", url=True),
            terms_of_service=tos if isinstance(tos, str) else "",
            external_account_required=meta.get("externalAccountRequired") is True,
        )


@dataclass(frozen=True)
class Challenge:
    """RFC 8555 §7.1.5 (and §8.3, RFC 8737 §3: both carry a ``token``)."""

    type: str
    url: str
    status: str
    token: str = ""
    error: Problem | None = None

    @classmethod
    def from_json(cls, data: Any) -> Challenge:
        c = _object(data, "challenge")
        return cls(type=_string(c, "type", "challenge"),
                   url=_string(c, "url", "challenge", url=True),
                   status=_string(c, "status", "challenge"),
                   token=_string(c, "token", "challenge", required=False),
                   error=_problem(c.get("error")))


@dataclass(frozen=True)
class Authorization:
    """RFC 8555 §7.1.4."""

    identifier: str
    status: str
    challenges: tuple[Challenge, ...]
    wildcard: bool = False

    @classmethod
    def from_json(cls, data: Any) -> Authorization:
        a = _object(data, "authorization")
        raw = a.get("challenges")
        if not isinstance(raw, list):
            raise AcmeProtocolError("the CA's authorization has no list of challenges")
        return cls(identifier=_identifier(a.get("identifier"), "authorization"),
                   status=_string(a, "status", "authorization"),
                   challenges=tuple(Challenge.from_json(c) for c in raw[:20]),
                   wildcard=a.get("wildcard") is True)

    @property
    def error(self) -> Problem | None:
        """Why validation failed: the error of the challenge that was tried."""
        for challenge in self.challenges:
            if challenge.error is not None:
                return challenge.error
        return None


@dataclass(frozen=True)
class Order:
    """RFC 8555 §7.1.3."""

    status: str
    identifiers: tuple[str, ...]
    authorizations: tuple[str, ...]
    finalize: str
    certificate: str = ""
    error: Problem | None = None

    @classmethod
    def from_json(cls, data: Any) -> Order:
        o = _object(data, "order")
        idents = o.get("identifiers")
        authzs = o.get("authorizations")
        if not isinstance(idents, list) or not isinstance(authzs, list) or \
                not all(isinstance(u, str) and u.startswith("https://") for u in authzs):
            raise AcmeProtocolError("the CA's order lacks its identifiers or authorizations")
        return cls(status=_string(o, "status", "order"),
                   identifiers=tuple(_identifier(i, "order") for i in idents[:100]),
                   authorizations=tuple(authzs[:100]),
                   finalize=_string(o, "finalize", "order", url=True),
                   certificate=_string(o, "certificate", "order", required=False, url=True)
                   if o.get("certificate") is not None else "",
                   error=_problem(o.get("error")))
