"""Helpers shared by the test suites and the benchmarks.

- ``procs``: start and stop processes, wait for ports and conditions, all with time limits.
- ``postfix``: a throwaway private Postfix instance (``ThrowawayPostfix``) used as an
  interoperability peer in tests and as the reference point in the benchmarks.
- ``dovecot``: a throwaway private Dovecot (``ThrowawayDovecot``), the IMAP/POP3 reference.
- ``imap_clients``: drivers for the real clients users read mail with: mbsync (isync),
  offlineimap3, fetchmail and mutt.
- ``dns``: a throwaway NSD + validating Unbound (``ThrowawayDNS``) with DNSSEC-signed test
  zones, for MX, TLSA (DANE) and MTA-STS lookups.
- ``https``: a local HTTPS server (MTA-STS policies); ``certs``: a private test CA.
- ``sink``: Postfix's smtp-sink as an outbound destination that dumps what it receives.

Nothing here is part of the ``mailkeep`` package; none of it runs in production.
"""
