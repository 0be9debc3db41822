"""Which names, when to renew, which challenges: the certificate manager's rules."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from mailkeep.acme.certs import CertificateInfo, generate_key, make_csr
from mailkeep.acme.manager import (
    challenge_types_for,
    due_reason,
    is_optional,
    wanted_names,
)
from mailkeep.acme.storage import StoredCertificate
from mailkeep.config import ConfigError, load_config

BASE = """\
hostname = "mx.example.org"
data_dir = "data"

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:2525"

[domains."example.org"]
[domains."bücher.example"]
"""


def _config(tmp_path: Path, extra: str = ""):
    path = tmp_path / "mailkeep.toml"
    path.write_text(BASE + extra)
    return load_config(path)


def test_default_names_are_hostname_then_mta_sts_and_autoconfig_of_each_domain(tmp_path):
    config = _config(tmp_path, "[acme]\nenabled = true\n")
    assert wanted_names(config) == [
        "mx.example.org",
        "mta-sts.example.org", "autoconfig.example.org",
        "mta-sts.xn--bcher-kva.example", "autoconfig.xn--bcher-kva.example",
    ]
    assert not is_optional("mx.example.org", "mx.example.org")
    assert is_optional("mta-sts.example.org", "mx.example.org")
    assert is_optional("autoconfig.example.org", "mx.example.org")
    # A hostname that happens to look optional is still required.
    assert not is_optional("autoconfig.example.org", "autoconfig.example.org")


def test_configured_names_replace_the_default(tmp_path):
    config = _config(tmp_path, '[acme]\nenabled = true\nnames = ["Mail.Example.org", '
                     '"mx.example.org", "mail.example.org"]\n')
    assert wanted_names(config) == ["mail.example.org", "mx.example.org"]


def test_retry_interval_and_bad_values(tmp_path):
    config = _config(tmp_path, '[acme]\nenabled = true\nretry_interval = "2m"\n')
    assert config.acme.retry_interval == 120
    assert _config(tmp_path, "[acme]\nenabled = true\n").acme.retry_interval == 300
    with pytest.raises(ConfigError, match="retry_interval"):
        _config(tmp_path, '[acme]\nenabled = true\nretry_interval = "3d"\n')


def test_challenge_types_follow_the_listeners(tmp_path):
    config = _config(tmp_path, "[acme]\nenabled = true\n")
    assert challenge_types_for(config) == ()
    web = ('[[listeners]]\nprotocol = "https"\naddress = "127.0.0.1:8443"\n\n'
           '[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:8080"\n\n')
    path = tmp_path / "web.toml"
    path.write_text(BASE.replace("[domains", web + "[domains", 1) + "[acme]\nenabled = true\n")
    assert challenge_types_for(load_config(path)) == ("http-01", "tls-alpn-01")
    path.write_text(BASE.replace("[domains", web + "[domains", 1)
                    + '[acme]\nenabled = true\nchallenges = ["tls-alpn-01"]\n')
    assert challenge_types_for(load_config(path)) == ("tls-alpn-01",)


def _stored(names: list[str], days: float, lifetime_days: float = 90,
            source: str = "https://acme-v02.api.letsencrypt.org/directory"
            ) -> StoredCertificate:
    not_after = NOW + datetime.timedelta(days=days)
    info = CertificateInfo(names=tuple(names), key_type="ecdsa", issuer="CN=R3", serial="1",
                           not_before=not_after - datetime.timedelta(days=lifetime_days),
                           not_after=not_after)
    return StoredCertificate("ecdsa", Path("/nonexistent"), info, source)


NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
NAMES = ["mx.example.org", "mta-sts.example.org"]


def test_when_a_certificate_is_due(tmp_path):
    config = _config(tmp_path, "[acme]\nenabled = true\n")
    assert due_reason(None, NAMES, config, NOW) == "no certificate yet"
    assert due_reason(_stored(NAMES, 60), NAMES, config, NOW) is None
    assert due_reason(_stored(NAMES, 60), NAMES, config, NOW, force=True) == \
        "renewal requested"
    assert due_reason(_stored(NAMES[:1], 60), NAMES, config, NOW) == \
        "it lacks mta-sts.example.org"
    reason = due_reason(_stored(NAMES, 29), NAMES, config, NOW)
    assert reason is not None and "(29.0 days left)" in reason
    assert due_reason(_stored(NAMES, 60, source="https://staging.test/dir"), NAMES, config,
                      NOW) == "the [acme] directory changed"


def test_short_lived_certificates_renew_at_two_thirds_of_their_life(tmp_path):
    config = _config(tmp_path, "[acme]\nenabled = true\n")  # renew_before = 30 days
    six_days = _stored(NAMES, 3, lifetime_days=6)
    assert six_days.info.renewal_time(config.acme.renew_before) == \
        six_days.info.not_after - datetime.timedelta(days=2)
    assert due_reason(six_days, NAMES, config, NOW) is None
    assert due_reason(_stored(NAMES, 1.9, lifetime_days=6), NAMES, config, NOW) is not None


def test_csr_names_every_identifier():
    from cryptography import x509

    key = generate_key("rsa")
    csr = x509.load_der_x509_csr(make_csr(key, NAMES))
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == NAMES
    long_name = "a" * 60 + ".example.org"
    csr = x509.load_der_x509_csr(make_csr(key, [long_name]))
    assert len(csr.subject) == 0  # over 64 characters: no common name, SAN only
