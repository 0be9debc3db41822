"""ACME (RFC 8555): certificates obtained and renewed from a CA such as Let's Encrypt.

The package is layered so that every protocol detail is checkable against its RFC:

- :mod:`.jws`: the account key, JSON Web Signatures (RFC 7515, RFC 8555 §6.2), JWK
  thumbprints (RFC 7638) and key authorizations (RFC 8555 §8.1). Pure functions.
- :mod:`.messages`: the CA's JSON objects (directory, order, authorization, challenge) and
  problem documents (RFC 7807, RFC 8555 §6.7), parsed and validated. Pure functions.
- :mod:`.tlsalpn`: the TLS-ALPN-01 challenge certificate (RFC 8737 §3).
- :mod:`.certs`: keys, CSRs and what a certificate says (names, expiry, key type).
- :mod:`.client`: the protocol over HTTPS (aiohttp): nonces, accounts, orders,
  challenges, finalization, download.
- :mod:`.storage`: what is kept in ``data_dir/acme`` (account key, certificate pairs
  switched atomically, state for ``mailkeep cert``).
- :mod:`.manager`: when to renew, which names, retries; the running server's
  :class:`~.manager.CertificateManager` and the one-shot
  :func:`~.manager.obtain_standalone` for ``mailkeep quickstart`` and ``mailkeep cert``.
"""
