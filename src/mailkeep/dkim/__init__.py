"""DKIM: signing outgoing mail (RFC 6376, RFC 8463 Ed25519) and the keys it signs with.

- ``keys``: per-domain selectors under ``data_dir/dkim/``, key generation, rotation,
  the DNS TXT records to publish;
- ``canon``: relaxed canonicalization of header fields and (streamed) bodies;
- ``sign``: the DKIM-Signature fields for a message, one per active key.

Typical use at submission time::

    keys = DkimKeys.for_data_dir(config.data_dir)
    fields = sign_message(header_block, spool_path, body_offset,
                          keys.signing_keys(domain), domain=domain)
"""

from mailkeep.dkim.keys import DkimKeyError, DkimKeys, Selector, SigningKey
from mailkeep.dkim.sign import DkimSignError, sign_message

__all__ = ["DkimKeyError", "DkimKeys", "DkimSignError", "Selector", "SigningKey", "sign_message"]
