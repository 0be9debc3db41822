"""``mailkeep check``: is the server set up right, as the rest of the Internet sees it?

It resolves every DNS record :mod:`mailkeep.dnsrecords` says the domains need and judges
each one (:mod:`.records`), checks the server's reverse DNS and its standing on DNS
blocklists (:mod:`.reputation`), the certificates every TLS listener serves and the
TLSA records of port 25 (:mod:`.tls`), the MTA-STS policy as senders fetch it
(:mod:`.mtasts`), the DKIM keys (:mod:`.keys`), and that port 25 is no open relay
(:mod:`.relay`). :func:`run_checks` runs them all within one time limit and returns
:class:`Finding` objects; :mod:`.report` prints them.
"""

from mailkeep.checker.context import CheckOptions
from mailkeep.checker.findings import Finding, Status, counts, exit_status
from mailkeep.checker.run import run_checks

__all__ = ["CheckOptions", "Finding", "Status", "counts", "exit_status", "run_checks"]
