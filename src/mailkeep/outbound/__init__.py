"""Sending mail out: the SMTP client session (``client``) used for relayhost submission
and direct delivery to MX hosts. See docs/outbound.md."""
