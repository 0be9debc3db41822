"""The inbound policy (issue 5): what port 25 accepts, in Postfix's own syntax.

Pure building blocks, no I/O:

* :mod:`mailkeep.policy.tables` reads Postfix lookup tables — ``hash:``/``texthash:``
  key/value files, ``cidr:`` networks, ``pcre:``/``regexp:`` patterns — and searches them
  in access(5) order for client addresses and names, HELO names, senders and recipients.
  Patterns are translated to Python's ``re`` and checked for catastrophic backtracking
  when the table is loaded (the one file read here).
* :mod:`mailkeep.policy.actions` turns table results (OK, REJECT text, 554 text, IGNORE,
  PREPEND header, ...) into typed actions and Postfix-shaped SMTP replies.
* :mod:`mailkeep.policy.checks` applies header_checks(5) and body_checks(5) to a message,
  MIME part headers included, and returns the verdict and the rewritten message.
* :mod:`mailkeep.policy.rules` parses a listener's ordered rule list and checks it.

With I/O, each behind a small interface:

* :mod:`mailkeep.policy.inbound` runs the rules for one SMTP session, step by step, and
  verifies each message (mailkeep.trust) into Authentication-Results;
* :mod:`mailkeep.policy.greylist` keeps greylisting state in data_dir/greylist.db;
* :mod:`mailkeep.policy.clamd` and :mod:`mailkeep.policy.rspamd` talk to those daemons.

See docs/inbound-policy.md and docs/policy.md.
"""
