"""The DKIM keys mail is signed with: present, readable and long enough (RFC 8301 §3.2:
signers MUST use RSA keys of at least 1024 bits and SHOULD use 2048 or more; verifiers
MUST NOT accept signatures by shorter keys). Whether DNS publishes the same keys is
checked with the other records (mailkeep.checker.records)."""

from __future__ import annotations

from mailkeep.checker.findings import Finding, Status
from mailkeep.dkim.keys import DkimKeyError, DkimKeys

CHECK = "dkim"
MIN_RSA_BITS = 1024
RECOMMENDED_RSA_BITS = 2048


def check_dkim_keys(keys: DkimKeys, domain: str) -> list[Finding]:
    """One finding per active key of ``domain`` (or one saying there is none)."""
    subject = f"DKIM keys of {domain}"
    rotate = f"'mailkeep dkim rotate {domain} --rsa-bits {RECOMMENDED_RSA_BITS}', then publish " \
             f"the new records from 'mailkeep dns records {domain}'"
    try:
        signing = keys.signing_keys(domain)
    except DkimKeyError as exc:
        return [Finding(Status.FAIL, subject, f"cannot be read: {exc}; mail is sent unsigned",
                        f"restore the key files from a backup, or create new keys with "
                        f"{rotate}", CHECK)]
    if not signing:
        return [Finding(Status.WARN, subject,
                        "none: mail is not signed, and fails DMARC wherever SPF fails too "
                        "(forwarded mail)",
                        f"run 'mailkeep dkim keygen {domain}', then publish the records from "
                        f"'mailkeep dns records {domain}'", CHECK)]
    findings = []
    for key in signing:
        where = f"{subject}: selector {key.selector}"
        if key.algorithm != "rsa":
            findings.append(Finding(Status.OK, where, f"{key.algorithm} (RFC 8463)", "", CHECK))
            continue
        bits = key.private_key.key_size  # type: ignore[union-attr]
        if bits < MIN_RSA_BITS:
            findings.append(Finding(Status.FAIL, where,
                                    f"RSA {bits} bits: verifiers ignore signatures by keys "
                                    f"under {MIN_RSA_BITS} bits (RFC 8301 §3.2)", rotate, CHECK))
        elif bits < RECOMMENDED_RSA_BITS:
            findings.append(Finding(Status.WARN, where,
                                    f"RSA {bits} bits: weaker than the {RECOMMENDED_RSA_BITS} "
                                    "bits RFC 8301 §3.2 asks for", rotate, CHECK))
        else:
            findings.append(Finding(Status.OK, where, f"RSA {bits} bits", "", CHECK))
    return findings
