"""Migration from a Postfix + Dovecot server (`mailkeep migrate`, docs/migration.md).

* ``sources`` — where the old server's files are (``--root``), bounded reads;
* ``postfix`` — main.cf ($name expansion), master.cf, lookup tables, aliases(5);
* ``dovecot`` — dovecot.conf, passwd-files, mail_location, Maildir layouts;
* ``catalog`` — what each setting becomes: mapped, built in, or not migrated and why;
* ``plan`` — ``build_plan``: every decision, before anything is written;
* ``apply`` — ``prepare`` (validate, find conflicts) and ``apply`` (write, import mail);
  the functions stay in their module (``mailkeep.migrate.apply.apply``).
"""

from mailkeep.migrate.apply import ApplyOptions, ApplyResult, ConflictError
from mailkeep.migrate.plan import MigrationSources, Plan, Unmapped, build_plan
from mailkeep.migrate.sources import MigrateError, SourceTree

__all__ = [
    "ApplyOptions",
    "ApplyResult",
    "ConflictError",
    "MigrateError",
    "MigrationSources",
    "Plan",
    "SourceTree",
    "Unmapped",
    "build_plan",
]
