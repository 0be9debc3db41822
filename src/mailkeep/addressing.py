"""Recipient resolution: which mailbox (and folder) an address delivers to, if any.

Pure and fast: the SMTP and LMTP servers call ``Resolver.resolve`` for every RCPT TO, so
all the work (alias expansion, loop detection, catch-all tables) happens once in
``Resolver.__init__`` and a lookup is a few dictionary probes.

The rules are tried in this order; the first that applies decides:

1. The domain is not one of ours: ``foreign_domain`` (the receiver answers 554 5.7.1,
   relaying denied).
2. The address is on the domain's ``burned`` list: ``burned`` (550 5.1.1), even if a
   catch-all would take it.
3. The address is an account: ``deliver`` to it. A relay-only account has no mailbox, so
   mail to it is ``unknown``.
4. The address is one of an account's ``aliases``: ``deliver`` to that account.
5. The address is an entry of ``[aliases]``: expand it recursively (aliases may name other
   aliases, sub-addresses and accounts), dropping duplicates. If any final target lies
   outside our domains the answer is ``remote_unsupported`` (a 4xx temporary failure:
   forwarding to external addresses is not enabled yet) - nothing is delivered rather
   than a partial delivery.
6. Sub-addressing (RFC 5233): the local part is split at the first occurrence of any of the
   domain's separator characters; a burned base is ``burned``, otherwise the base is looked
   up again as in 3-5. With ``subaddress_to_folder`` the detail, in the case it was
   received in, names the folder to deliver into (the store delivers to the inbox when no
   such folder exists). Sub-addresses written in the configuration (alias targets) are
   canonical, hence lower-case.
7. ``postmaster`` (case-insensitive, RFC 5321 §4.5.1, RFC 2142 §4) in every domain goes to
   the configured postmaster, or by default to the first account of that domain, or the
   first account of the first domain that has one.
8. Personalized catch-all: a local part that ends with the local part of one of the
   domain's accounts goes to that account (``shopme@`` -> ``me@``); the longest match wins.
9. The domain's ``catch_all``.
10. Otherwise ``unknown`` (550 5.1.1).

Local parts are compared case-insensitively after NFC normalisation, domains by their IDNA
A-label (see ``mailkeep.config.names``). Relay-only accounts are never delivery targets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from mailkeep.config.names import fold_local_part, lookup_address, lookup_domain
from mailkeep.config.schema import MAX_ALIAS_DEPTH, Config, Domain

ResolutionKind = Literal["deliver", "unknown", "burned", "foreign_domain", "remote_unsupported"]


@dataclass(frozen=True)
class Target:
    """A mailbox to deliver to: a canonical account address and an optional folder."""

    account: str
    folder: str | None = None


@dataclass(frozen=True)
class Resolution:
    """The answer for one recipient.

    ``targets`` is non-empty only for ``deliver`` (and, for information, lists the local
    targets of a ``remote_unsupported`` alias); ``external`` names the addresses outside our
    domains that made an alias ``remote_unsupported``. ``reason`` is for logs, not clients.
    """

    kind: ResolutionKind
    targets: tuple[Target, ...] = ()
    reason: str = ""
    external: tuple[str, ...] = ()


@dataclass(frozen=True)
class AliasProblem:
    """A configuration mistake found while expanding aliases (reported by config loading)."""

    source: str  # the alias, catch-all owner or "postmaster" whose expansion failed
    target: str | None
    message: str


@dataclass(frozen=True)
class _Expansion:
    """What an address expands to: local mailboxes and addresses outside our domains."""

    targets: tuple[Target, ...]
    external: tuple[str, ...]


_EMPTY = _Expansion((), ())


def split_subaddress(local: str, separators: str) -> tuple[str, str] | None:
    """Split ``local`` at the first occurrence of any separator character (RFC 5233 §1).

    Returns ``(base, detail)``, or None when there is no separator or the base would be
    empty (``+tag@`` is not a sub-address of anything).
    """
    if not separators:
        return None
    cut = -1
    for index, ch in enumerate(local):
        if ch in separators:
            cut = index
            break
    if cut <= 0:
        return None
    return local[:cut], local[cut + 1:]


class Resolver:
    """Answers "where does this address go?" for one configuration snapshot.

    Build a new Resolver when the configuration is reloaded; instances are immutable and may
    be shared between threads and tasks.
    """

    def __init__(self, config: Config) -> None:
        self._domains: dict[str, Domain] = dict(config.domains)
        # Delivery addresses: accounts with a mailbox and their own aliases -> account.
        self._mailboxes: dict[str, str] = {}
        # Addresses of relay-only accounts (and their aliases): they never receive mail.
        self._relay_only: dict[str, str] = {}
        for account in config.accounts.values():
            table = self._relay_only if account.relay_only else self._mailboxes
            table[account.address] = account.address
            for alias in account.aliases:
                table.setdefault(alias, account.address)

        self.problems: list[AliasProblem] = []
        self._alias_source = {k: tuple(v) for k, v in config.aliases.items()}
        self._aliases: dict[str, _Expansion] = {}
        self._expanding: list[str] = []
        for alias in self._alias_source:
            self._expand_alias(alias)

        # Personalized catch-all: per domain, local part -> account (mailboxes only).
        self._personal: dict[str, dict[str, str]] = {}
        for account in config.accounts.values():
            if account.relay_only:
                continue
            local, _, domain = account.address.rpartition("@")
            self._personal.setdefault(domain, {})[local] = account.address

        self._catch_all: dict[str, _Expansion] = {}
        for name, domain in self._domains.items():
            if domain.catch_all:
                self._catch_all[name] = self._expand_target(
                    domain.catch_all, f"catch-all of {name}", folder=None)

        self._postmaster: dict[str, _Expansion] = {}
        self._postmaster_default = self._default_postmaster(config)
        for name in self._domains:
            if config.postmaster:
                self._postmaster[name] = self._expand_target(
                    config.postmaster, "postmaster", folder=None)
            else:
                account = self._first_mailbox_of(config, name) or self._postmaster_default
                if account:
                    self._postmaster[name] = _Expansion((Target(account),), ())
        self._expanding.clear()

    # -- public interface ---------------------------------------------------------------

    def is_local_domain(self, domain: str) -> bool:
        """True when mail for ``domain`` (any case, U-label or A-label) is ours to deliver."""
        canonical = lookup_domain(domain) if isinstance(domain, str) else None
        return canonical is not None and canonical in self._domains

    def resolve(self, address: str) -> Resolution:
        """Decide what happens to mail for ``address``; never raises."""
        parsed = lookup_address(address)
        if parsed is None:
            return Resolution("unknown", reason="not a valid address")
        local, domain_name, raw_local = parsed
        domain = self._domains.get(domain_name)
        if domain is None:
            return Resolution("foreign_domain", reason=f"{domain_name} is not a domain of this server")
        canonical = f"{local}@{domain_name}"
        if canonical in domain.burned:
            return Resolution("burned", reason=f"{canonical} is burned")

        found = self._lookup(canonical, folder=None)
        if found is not None:
            return found

        # Split the local part as received: the detail names a folder, and folder names
        # keep their case ("me+Lists@" delivers into "Lists").
        split = split_subaddress(raw_local, domain.subaddress_separator)
        base = detail_folder = None
        if split is not None:
            base, detail = fold_local_part(split[0]), split[1]
            detail_folder = detail if domain.subaddress_to_folder and detail else None
            base_address = f"{base}@{domain_name}"
            if base_address in domain.burned:
                return Resolution("burned", reason=f"{base_address} is burned")
            found = self._lookup(base_address, folder=detail_folder,
                                 how=f"sub-address of {base_address}")
            if found is not None:
                return found

        # RFC 5321 §4.5.1: every domain accepts mail for "postmaster", in any case.
        if local == "postmaster" or base == "postmaster":
            expansion = self._postmaster.get(domain_name)
            if expansion is not None and expansion.targets:
                return self._from_expansion(expansion, None, f"postmaster of {domain_name}")

        if domain.personalized_catch_all:
            account = self._personal_match(domain_name, local)
            folder = None
            if account is None and base is not None:
                account = self._personal_match(domain_name, base)
                folder = detail_folder
            if account is not None:
                return Resolution("deliver", (Target(account, folder),),
                                  f"personalized catch-all of {account}")

        expansion = self._catch_all.get(domain_name)
        if expansion is not None and (expansion.targets or expansion.external):
            return self._from_expansion(expansion, None, f"catch-all of {domain_name}")
        return Resolution("unknown", reason=f"no account or alias {canonical}")

    # -- lookups ------------------------------------------------------------------------

    def _lookup(self, address: str, folder: str | None, how: str | None = None) -> Resolution | None:
        account = self._mailboxes.get(address)
        if account is not None:
            reason = how or ("account" if account == address else f"alias of {account}")
            return Resolution("deliver", (Target(account, folder),), reason)
        owner = self._relay_only.get(address)
        if owner is not None:
            return Resolution("unknown", reason=f"{owner} is relay-only and has no mailbox")
        expansion = self._aliases.get(address)
        if expansion is not None:
            return self._from_expansion(expansion, folder, how or f"alias {address}")
        return None

    @staticmethod
    def _from_expansion(expansion: _Expansion, folder: str | None, reason: str) -> Resolution:
        targets = expansion.targets
        if folder is not None:
            targets = _dedupe(Target(t.account, t.folder or folder) for t in targets)
        if expansion.external:
            return Resolution(
                "remote_unsupported", targets,
                f"{reason} forwards to {', '.join(expansion.external)}, outside this server",
                expansion.external)
        if not targets:
            return Resolution("unknown", reason=f"{reason} has no mailbox to deliver to")
        return Resolution("deliver", targets, reason)

    def _personal_match(self, domain: str, local: str) -> str | None:
        accounts = self._personal.get(domain)
        if not accounts:
            return None
        # Longest suffix first: scanning from the left finds the longest match first.
        for start in range(len(local)):
            account = accounts.get(local[start:])
            if account is not None:
                return account
        return None

    # -- building the tables ------------------------------------------------------------

    def _expand_alias(self, alias: str) -> _Expansion:
        done = self._aliases.get(alias)
        if done is not None:
            return done
        if alias in self._expanding:
            cycle = [*self._expanding[self._expanding.index(alias):], alias]
            self.problems.append(AliasProblem(alias, None, "aliases form a loop: " + " -> ".join(cycle)))
            return _EMPTY
        if len(self._expanding) >= MAX_ALIAS_DEPTH:
            self.problems.append(AliasProblem(
                alias, None, f"aliases nest more than {MAX_ALIAS_DEPTH} levels deep"))
            return _EMPTY
        self._expanding.append(alias)
        targets: list[Target] = []
        external: list[str] = []
        for target in self._alias_source[alias]:
            expansion = self._expand_target(target, alias, folder=None)
            targets.extend(expansion.targets)
            external.extend(expansion.external)
        self._expanding.pop()
        result = _Expansion(_dedupe(targets), tuple(dict.fromkeys(external)))
        self._aliases[alias] = result
        return result

    def _expand_target(self, target: str, source: str, folder: str | None) -> _Expansion:
        account = self._mailboxes.get(target)
        if account is not None:
            return _Expansion((Target(account, folder),), ())
        if target in self._relay_only:
            self.problems.append(AliasProblem(
                source, target, f"{target!r} is a relay-only account, which has no mailbox"))
            return _EMPTY
        if target in self._alias_source:
            expansion = self._expand_alias(target)
            if folder is None:
                return expansion
            return _Expansion(_dedupe(Target(t.account, t.folder or folder) for t in expansion.targets),
                              expansion.external)
        local, _, domain_name = target.rpartition("@")
        domain = self._domains.get(domain_name)
        if domain is None:
            return _Expansion((), (target,))
        split = split_subaddress(local, domain.subaddress_separator)
        if split is not None and folder is None:
            base, detail = split
            base_address = f"{base}@{domain_name}"
            if base_address in self._mailboxes or base_address in self._alias_source:
                sub_folder = detail if domain.subaddress_to_folder and detail else None
                if sub_folder is None:
                    return self._expand_target(base_address, source, folder=None)
                return self._expand_target(base_address, source, folder=sub_folder)
        self.problems.append(AliasProblem(
            source, target, f"{target!r} is not an account or alias of this server"))
        return _EMPTY

    @staticmethod
    def _first_mailbox_of(config: Config, domain: str) -> str | None:
        suffix = "@" + domain
        for account in config.accounts.values():
            if not account.relay_only and account.address.endswith(suffix):
                return account.address
        return None

    @classmethod
    def _default_postmaster(cls, config: Config) -> str | None:
        for domain in config.domains:
            account = cls._first_mailbox_of(config, domain)
            if account:
                return account
        return None


def _dedupe(targets: Iterable[Target]) -> tuple[Target, ...]:
    """Keep the first target per account: one message per mailbox, whatever the path."""
    seen: dict[str, Target] = {}
    for target in targets:
        seen.setdefault(target.account, target)
    return tuple(seen.values())
