"""Reports about mail authentication that servers exchange: DMARC aggregate reports
(RFC 7489 §7.2) in and out.

- :mod:`.dmarc_xml`: the report format (RFC 7489 Appendix C), parsed and built;
- :mod:`.dmarc_store`: ``data_dir/dmarc.db``, received reports and our own evaluations;
- :mod:`.dmarc_ingest`: a report found in a message (xml, gzip, zip), into the store;
- :mod:`.dmarc_send`: our daily reports to the domains that ask for them (rua=).
"""
