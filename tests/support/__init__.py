"""Helpers shared by the test suites and the benchmarks.

- ``procs``: start and stop processes, wait for ports and conditions, all with time limits.
- ``postfix``: a throwaway private Postfix instance (``ThrowawayPostfix``) used as an
  interoperability peer in tests and as the reference point in the benchmarks.

Nothing here is part of the ``mailkeep`` package; none of it runs in production.
"""
