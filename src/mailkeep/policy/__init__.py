"""Inbound policy building blocks in Postfix's own syntax (issue 5), pure and I/O-free.

* :mod:`mailkeep.policy.tables` reads Postfix lookup tables — ``hash:``/``texthash:``
  key/value files, ``cidr:`` networks, ``pcre:``/``regexp:`` patterns — and searches them
  in access(5) order for client addresses and names, HELO names, senders and recipients.
  Patterns are translated to Python's ``re`` and checked for catastrophic backtracking
  when the table is loaded.
* :mod:`mailkeep.policy.actions` turns table results (OK, REJECT text, 554 text, IGNORE,
  PREPEND header, ...) into typed actions and Postfix-shaped SMTP replies.
* :mod:`mailkeep.policy.checks` applies header_checks(5) and body_checks(5) to a message,
  MIME part headers included, and returns the verdict and the rewritten message.

The SMTP receiver decides when to consult which table and what to do with the result;
nothing here touches a socket, a clock or (apart from :func:`~mailkeep.policy.tables.
load_table`, which reads the named file) the file system. See docs/policy.md.
"""
