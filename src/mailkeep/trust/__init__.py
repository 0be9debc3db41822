"""Inbound sender authentication: SPF, DKIM verification, DMARC, ARC, iprev and the
Authentication-Results header."""
