"""The seeds' old servers (tests/migrate/fixtures) and how each is migrated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailkeep.migrate.plan import MigrationSources
from mailkeep.migrate.sources import SourceTree

FIXTURES = Path(__file__).parent / "fixtures"

#: The passwords behind the fixtures' hashes (fixtures/README.md).
PASSWORDS = {
    "rolf@example.com": "rolfheinrich",
    "user1@example.com": "synb c1z t3z",
    "user2@example.com": "bb q2y yV7zl",
    "relay1@example.com": "62xLj dfq oh",
    "example@domain.tld": "Rainloop-Nextcloud-1",
    "eg@another.tld": "edgar pimps 2 mail",
    "brian@example.net": "insecure",
    "notbrian@example.net": "not brian at all",
}


@dataclass(frozen=True)
class Seed:
    """One old server: where its files are and the options its migration takes."""

    name: str
    postfix: str
    dovecot_conf: str
    passwd: tuple[str, ...] = ()
    mail_location: str | None = None
    #: Mailbox -> message count of each account's Maildir in the fixture.
    mail: dict[str, dict[str, int]] = field(default_factory=dict)

    def root(self, base: Path = FIXTURES) -> Path:
        return base / self.name

    def sources(self, base: Path = FIXTURES) -> MigrationSources:
        root = self.root(base)
        return MigrationSources(
            postfix_dir=root / self.postfix, tree=SourceTree(root),
            dovecot_conf=root / self.dovecot_conf,
            passwd_files=tuple(root / p for p in self.passwd),
            mail_location=self.mail_location)

    def argv(self, config: Path, data_dir: Path, base: Path = FIXTURES) -> list[str]:
        """`mailkeep migrate` arguments for this seed."""
        root = self.root(base)
        argv = ["migrate", "--root", str(root), "--postfix", str(root / self.postfix),
                "--dovecot-conf", str(root / self.dovecot_conf), "--config", str(config),
                "--data-dir", str(data_dir), "--no-progress"]
        for path in self.passwd:
            argv += ["--dovecot-passwd", str(root / path)]
        if self.mail_location:
            argv += ["--mail-location", self.mail_location]
        return argv


SEEDS = {
    "seed000": Seed(
        "seed000", "usr/local/etc/postfix", "usr/local/etc/dovecot/dovecot.conf",
        mail={"rolf@example.com": {"INBOX": 4, "Sent Messages": 2, "Deleted Messages": 1,
                                   "Junk": 1, "Drafts": 1, "Archive/2020": 2},
              "user1@example.com": {"INBOX": 2}}),
    "seed001": Seed(
        "seed001", "etc/postfix", "etc/dovecot/dovecot.conf",
        passwd=("etc/dovecot/passdb-export", "etc/dovecot/userdb"),
        mail={"example@domain.tld": {"INBOX": 2, "Sent": 1, "Trash": 1},
              "eg@another.tld": {"INBOX": 1}}),
    "seed004": Seed(
        "seed004", "opt/local/etc/postfix", "opt/local/etc/dovecot/dovecot.conf",
        mail_location="maildir:~/Maildir:LAYOUT=fs",
        mail={"brian@example.net": {"INBOX": 2, "Sent": 1, "Archive/2020": 2},
              "notbrian@example.net": {"INBOX": 1, "Junk": 1}}),
}


@pytest.fixture(params=sorted(SEEDS))
def seed(request: pytest.FixtureRequest) -> Seed:
    return SEEDS[request.param]
