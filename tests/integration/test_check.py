"""`mailkeep check` against real peers: every verdict, and the fix it gives.

The DNS is real: NSD serves the zones and a validating Unbound answers the checker
(tests/support/dns.py), with ``example.test`` DNSSEC-signed. The correct zone is what
``mailkeep dns records`` prints, parsed as a zone file; broken zones are that zone with
one thing changed each. The TLS listeners, STARTTLS dialogues and the relay test talk to
a real ``mailkeep serve`` with a certificate from a test CA; the MTA-STS policy is fetched
over HTTPS from tests/support/https.py serving the text Mailkeep serves (or a broken
one). Blocklist listings come from a test DNSBL zone. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.name
import dns.zone
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from tests.integration.conftest import MAILKEEP, RunningServer, free_ports
from tests.support.certs import IssuedCert, TestCA
from tests.support.dns import ThrowawayDNS, Zone
from tests.support.https import LocalHTTPS, Reply

from mailkeep.checker import CheckOptions, Finding, Status, run_checks
from mailkeep.checker.context import CheckContext
from mailkeep.checker.mtasts import check_policy
from mailkeep.checker.relay import check_open_relay
from mailkeep.checker.tls import check_served_tlsa, judge_probes, probe_all
from mailkeep.config import Config, load_config
from mailkeep.dkim.keys import public_key_txt, txt_strings
from mailkeep.dnsrecords import MTA_STS_PATH, mta_sts_policy_text

DOMAIN = "example.test"
HOST = "mx.example.test"
REVERSE_ZONE = "1.0.0.127.in-addr.arpa"
DNSBL_ZONE = "dnsbl.test"
#: Bound on one whole check in these tests (seconds); the checker's own default is 120.
CHECK_TIMEOUT = 60.0

CONFIG = """\
hostname = "mx.example.test"
data_dir = "data"

[log]
file = "{log}"

[tls]
cert = "{cert}"
key = "{key}"

[policy]
greet_wait = "0.2s"

[dns]
ipv4 = ["127.0.0.1"]

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{smtp}"

[[listeners]]
protocol = "submission"
address = "127.0.0.1:{submission}"

[[listeners]]
protocol = "submissions"
address = "127.0.0.1:{submissions}"

[[listeners]]
protocol = "imap"
address = "127.0.0.1:{imap}"

[[listeners]]
protocol = "imaps"
address = "127.0.0.1:{imaps}"

[[listeners]]
protocol = "pop3"
address = "127.0.0.1:{pop3}"

[[listeners]]
protocol = "pop3s"
address = "127.0.0.1:{pop3s}"

[[listeners]]
protocol = "https"
address = "127.0.0.1:{https}"

[[listeners]]
protocol = "lmtp"
address = "unix:{lmtp}"

[domains."example.test"]

[domains."nodns.test"]

[accounts."me@example.test"]
"""

#: What the checker's configuration adds: where the test serves the MTA-STS policy, and
#: the test blocklist (whose lookups of 127.0.0.1 need check_private_addresses).
CHECKER_EXTRA = """
[delivery]
mta_sts_port = {mta_sts_port}

[policy.dnsbl]
sites = ["dnsbl.test"]
check_private_addresses = true
"""


@dataclass
class Setup:
    root: Path
    server: RunningServer
    config: Config
    ca: TestCA
    cert: IssuedCert
    #: The zone text `mailkeep dns records example.test` printed.
    snippet: str

    def checker_config(self, mta_sts_port: int) -> Config:
        """The server's configuration as the checker sees it in these tests."""
        path = self.root / f"checker-{mta_sts_port}.toml"
        path.write_text(self.server.config.read_text()
                        + CHECKER_EXTRA.format(mta_sts_port=mta_sts_port))
        return load_config(path)

    def options(self, dns: ThrowawayDNS, **changes: object) -> CheckOptions:
        host, port = dns.resolver_address
        values: dict[str, object] = {"resolver": f"{host}:{port}", "ca_file": self.ca.ca_file,
                                     "total_timeout": CHECK_TIMEOUT}
        values.update(changes)
        return CheckOptions(**values)  # type: ignore[arg-type]


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAILKEEP, *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("check")
    ca = TestCA.create(root / "ca")
    cert = ca.issue([HOST, f"mta-sts.{DOMAIN}", f"autoconfig.{DOMAIN}"], stem="mx")
    (smtp, submission, submissions, imap, imaps, pop3, pop3s,
     https, smtps) = free_ports(9)
    config_path = root / "mailkeep.toml"
    log = root / "mailkeep.log"
    config_path.write_text(CONFIG.format(
        log=log, cert=cert.cert_file, key=cert.key_file, smtp=smtp, submission=submission,
        submissions=submissions, imap=imap, imaps=imaps, pop3=pop3, pop3s=pop3s,
        https=https, lmtp=root / "lmtp.sock"))
    keygen = _cli(config_path, "dkim", "keygen", DOMAIN)
    assert keygen.returncode == 0, keygen.stderr
    records = _cli(config_path, "dns", "records", DOMAIN)
    assert records.returncode == 0, records.stderr
    server = RunningServer(root, config_path, smtp, smtps, root / "lmtp.sock", log,
                           imap_port=imap, imaps_port=imaps, pop3_port=pop3,
                           pop3s_port=pop3s, submission_port=submission,
                           submissions_port=submissions)
    server.start()
    try:
        yield Setup(root, server, load_config(config_path), ca, cert, records.stdout)
    finally:
        server.stop()


# -- zones -----------------------------------------------------------------------------------

Lines = list[tuple[str, str, str]]  # (owner name, type, rdata), owner absolute


def parse_snippet(text: str) -> Lines:
    """The records of a `mailkeep dns records` snippet, read by dnspython's zone parser."""
    zone = dns.zone.from_text(text, origin=dns.name.root, check_origin=False,
                              relativize=False)
    return [(name.to_text(), rdata.rdtype.name, rdata.to_text())
            for name, _ttl, rdata in zone.iterate_rdatas()]


def replace_records(lines: Lines, name: str, rdtype: str, *rdata: str) -> Lines:
    """``lines`` with the ``rdtype`` records of ``name`` replaced by ``rdata`` (none:
    removed)."""
    owner = name.rstrip(".") + "."
    kept = [line for line in lines if not (line[0] == owner and line[1] == rdtype)]
    return kept + [(owner, rdtype, value) for value in rdata]


def zones(lines: Lines, *, listed: bool = False, extra: tuple[Zone, ...] = ()) -> list[Zone]:
    """The test zones holding ``lines``; ``listed`` puts 127.0.0.1 on the test DNSBL."""
    by_zone: dict[str, list[str]] = {DOMAIN: [], REVERSE_ZONE: []}
    for owner, rdtype, rdata in lines:
        origin = next(z for z in by_zone if owner.rstrip(".").endswith(z))
        by_zone[origin].append(f"{owner} 300 IN {rdtype} {rdata}")
    dnsbl = ('1.0.0.127 A 127.0.0.2\n1.0.0.127 TXT "listed for testing: see '
             'https://dnsbl.test/lookup"' if listed else "")
    return [Zone(DOMAIN, "\n".join(by_zone[DOMAIN]), signed=True),
            Zone(REVERSE_ZONE, "\n".join(by_zone[REVERSE_ZONE])),
            Zone(DNSBL_ZONE, dnsbl), *extra]


def find(findings: list[Finding], subject: str) -> Finding:
    """The one finding about ``subject`` (exactly, else the one starting with it)."""
    matching = [f for f in findings if f.subject == subject] or [
        f for f in findings if f.subject.startswith(subject)]
    assert len(matching) == 1, f"{len(matching)} findings for {subject!r}: {matching}"
    return matching[0]


def show(findings: list[Finding]) -> str:
    return "\n".join(f"{f.status} {f.subject}: {f.message} | {f.fix}" for f in findings)


def check(setup: Setup, zone_list: list[Zone], *, policy: Reply | None = None,
          domains: tuple[str, ...] = (DOMAIN,), relay_test: bool = True,
          lame_zones: tuple[str, ...] = ()) -> list[Finding]:
    """Run every check with DNS serving ``zone_list`` and the policy host answering
    ``policy`` (default: the policy Mailkeep serves)."""
    if policy is None:
        policy = Reply(body=mta_sts_policy_text(setup.config).encode())

    async def main(dns: ThrowawayDNS) -> list[Finding]:
        async with LocalHTTPS(setup.cert) as https:
            https.serve(MTA_STS_PATH, policy, host=f"mta-sts.{DOMAIN}")
            config = setup.checker_config(https.port)
            return await run_checks(config, domains,
                                    setup.options(dns, relay_test=relay_test))

    with ThrowawayDNS(zone_list, lame_zones=lame_zones) as dns:
        return asyncio.run(main(dns))


# -- the correct zone: everything OK -----------------------------------------------------------

@pytest.fixture(scope="module")
def good(setup: Setup) -> list[Finding]:
    return check(setup, zones(parse_snippet(setup.snippet)))


def test_correct_zone_everything_ok(good: list[Finding]) -> None:
    assert [f for f in good if f.status is not Status.OK] == [], show(good)
    checks = {f.check for f in good}
    assert checks == {"dns", "dkim", "mta-sts", "reverse-dns", "tls", "dnsbl", "relay"}
    assert find(good, f"{DOMAIN} MX").message == f"mail for {DOMAIN} goes to {HOST}"
    assert "allows 127.0.0.1" in find(good, f"{DOMAIN} TXT").message
    assert find(good, f"_25._tcp.{HOST} TLSA (served key)").message == \
        "matches every key port 25 serves"
    assert find(good, f"_25._tcp.{HOST} TLSA").message.endswith("DNSSEC-signed")
    assert find(good, "reverse DNS of 127.0.0.1").message == \
        f"PTR {HOST}, which resolves back to 127.0.0.1"
    assert find(good, "DNSBL 127.0.0.1").message == "not listed in dnsbl.test"
    assert "mode enforce" in find(good, "MTA-STS policy").message
    relay = find(good, "open relay test")
    assert "refused: 554 5.7.1" in relay.message and "relay-test@example.net" in relay.message
    # One certificate, served on every TLS listener (STARTTLS ones included).
    tls = find(good, "TLS certificate (ecdsa")
    for protocol in ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s",
                     "https"):
        assert f"({protocol})" in tls.message
    assert "trusted, valid for mx.example.test" in tls.message
    for selector_kind in ("rsa", "ed25519"):
        assert any(f.subject.endswith("._domainkey.example.test TXT")
                   and f"matches the {selector_kind} key" in f.message for f in good)


def test_cli_exit_status_and_json_on_the_correct_zone(setup: Setup) -> None:
    lines = parse_snippet(setup.snippet)

    async def main(dns: ThrowawayDNS) -> tuple[int, bytes, bytes]:
        async with LocalHTTPS(setup.cert) as https:
            https.serve(MTA_STS_PATH, Reply(body=mta_sts_policy_text(setup.config).encode()))
            path = setup.root / "cli-check.toml"
            path.write_text(setup.server.config.read_text()
                            + CHECKER_EXTRA.format(mta_sts_port=https.port))
            host, port = dns.resolver_address
            process = await asyncio.create_subprocess_exec(
                MAILKEEP, "check", DOMAIN, "--json", "--resolver", f"{host}:{port}",
                "--ca-file", str(setup.ca.ca_file), "--timeout", str(CHECK_TIMEOUT),
                "--config", str(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await asyncio.wait_for(process.communicate(), CHECK_TIMEOUT + 10)
            assert process.returncode is not None
            return process.returncode, out, err

    with ThrowawayDNS(zones(lines)) as dns:
        code, out, err = asyncio.run(main(dns))
    report = json.loads(out)
    assert code == 0, out.decode() + err.decode()
    assert report["exit_status"] == 0 and report["summary"]["FAIL"] == 0
    assert report["hostname"] == HOST and report["domains"] == [DOMAIN]
    assert {f["status"] for f in report["findings"]} == {"OK"}


# -- a broken zone: each thing wrong gets its verdict and its fix ------------------------------

OTHER_KEY = public_key_txt(ed25519.Ed25519PrivateKey.generate())
STALE_TLSA = "3 1 1 " + hashlib.sha256(b"an old key").hexdigest()


@pytest.fixture(scope="module")
def broken(setup: Setup) -> list[Finding]:
    lines = parse_snippet(setup.snippet)
    rsa_selector = next(owner for owner, _, rdata in lines if "k=rsa" in rdata)
    ed_selector = next(owner for owner, _, rdata in lines if "k=ed25519" in rdata)
    lines = replace_records(lines, DOMAIN, "MX")
    lines = replace_records(lines, DOMAIN, "TXT", '"v=spf1 ip4:192.0.2.99 -all"')
    lines = replace_records(lines, rsa_selector, "TXT")
    lines = replace_records(lines, ed_selector, "TXT", f'"{OTHER_KEY}"')
    lines = replace_records(lines, f"_25._tcp.{HOST}", "TLSA", STALE_TLSA)
    lines = replace_records(lines, f"_dmarc.{DOMAIN}", "TXT", '"v=DMARC1; p=none"')
    lines = replace_records(lines, DOMAIN, "CAA", '0 issue "other-ca.test"')
    lines = replace_records(lines, f"_imap._tcp.{DOMAIN}", "SRV", f"0 1 143 {HOST}.")
    lines = replace_records(lines, f"_mta-sts.{DOMAIN}", "TXT", '"v=STSv1; id=old1"')
    lines = replace_records(lines, "1.0.0.127.in-addr.arpa", "PTR", "elsewhere.example.test.")
    return check(setup, zones(lines, listed=True))


def test_missing_mx(broken: list[Finding]) -> None:
    mx = find(broken, f"{DOMAIN} MX")
    assert mx.status is Status.FAIL
    assert mx.message == f"missing: {DOMAIN} has no MX record"
    assert mx.fix == f"add:\n{DOMAIN}. 3600 IN MX 10 {HOST}."


def test_wrong_spf(broken: list[Finding]) -> None:
    spf = find(broken, f"{DOMAIN} TXT")
    assert spf.status is Status.FAIL
    assert "'v=spf1 ip4:192.0.2.99 -all' does not allow this server (127.0.0.1: fail)" \
        in spf.message
    assert spf.fix == f'replace the SPF record of {DOMAIN} with:\n{DOMAIN}. 3600 IN TXT ' \
                      '"v=spf1 mx -all"'
    # The HELO record is still right.
    assert find(broken, f"{HOST} TXT").status is Status.OK


def test_missing_and_mismatched_dkim(setup: Setup, broken: list[Finding]) -> None:
    dkim = [f for f in broken if "._domainkey." in f.subject]
    assert len(dkim) == 2
    missing = next(f for f in dkim if f.message.startswith("missing"))
    assert missing.status is Status.FAIL
    assert missing.fix.startswith("add:\nmk") and "v=DKIM1; k=rsa; p=" in missing.fix
    # A 2048-bit key does not fit one TXT string: the fix splits it (RFC 1035 §3.3).
    assert " IN TXT (\n    \"v=DKIM1; k=rsa; p=" in missing.fix
    other = next(f for f in dkim if f is not missing)
    assert other.status is Status.FAIL
    assert "the published key is not the one Mailkeep signs with" in other.message
    assert other.fix.startswith("replace the TXT record of mk") and "k=ed25519" in other.fix
    assert OTHER_KEY not in other.fix


def test_tlsa_mismatch(broken: list[Finding]) -> None:
    record = find(broken, f"_25._tcp.{HOST} TLSA")
    served = find(broken, f"_25._tcp.{HOST} TLSA (served key)")
    # The zone is DNSSEC-signed, so DANE senders would refuse to deliver: FAIL.
    assert record.status is Status.FAIL and served.status is Status.FAIL
    assert "no TLSA record matches" in record.message
    assert record.fix.startswith(f"add:\n_25._tcp.{HOST}. 3600 IN TLSA 3 1 1 ")
    assert "DANE senders refuse to deliver" in served.message


def test_weaker_dmarc_and_foreign_caa_and_srv(broken: list[Finding]) -> None:
    dmarc = find(broken, f"_dmarc.{DOMAIN} TXT")
    assert dmarc.status is Status.WARN
    assert "p=none is weaker than the configured p=quarantine" in dmarc.message
    assert "no rua=" in dmarc.message
    assert dmarc.fix == (f"replace the TXT record of _dmarc.{DOMAIN} with:\n_dmarc.{DOMAIN}. "
                         '3600 IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@'
                         f'{DOMAIN}"')
    caa = find(broken, f"{DOMAIN} CAA")
    assert caa.status is Status.WARN and "not letsencrypt.org" in caa.message
    assert caa.fix == f'add:\n{DOMAIN}. 3600 IN CAA 0 issue "letsencrypt.org"'
    imap = find(broken, f"_imap._tcp.{DOMAIN} SRV")
    assert imap.status is Status.WARN
    assert imap.fix.endswith(f"_imap._tcp.{DOMAIN}. 3600 IN SRV 0 0 0 .")
    sts = find(broken, f"_mta-sts.{DOMAIN} TXT")
    assert sts.status is Status.WARN and "id=old1 is not the id of the current policy" \
        in sts.message


def test_ptr_not_forward_confirmed(broken: list[Finding]) -> None:
    ptr = find(broken, "reverse DNS of 127.0.0.1")
    assert ptr.status is Status.FAIL
    assert "PTR elsewhere.example.test" in ptr.message and "not forward-confirmed" in ptr.message
    assert f"1.0.0.127.in-addr.arpa. 3600 IN PTR {HOST}." in ptr.fix


def test_listed_on_a_blocklist(broken: list[Finding]) -> None:
    listed = find(broken, "DNSBL 127.0.0.1 in dnsbl.test")
    assert listed.status is Status.FAIL
    assert "listed (127.0.0.2; listed for testing: see https://dnsbl.test/lookup)" \
        in listed.message
    assert "ask for removal on the web site of dnsbl.test" in listed.fix


def test_broken_zone_leaves_the_rest_ok(broken: list[Finding]) -> None:
    # What was not broken is still judged OK: TLS, relay, the host's addresses.
    assert find(broken, f"{HOST} A").status is Status.OK
    assert find(broken, "open relay test").status is Status.OK
    assert find(broken, "TLS certificate").status is Status.OK
    # Without MX records there is nothing the policy could leave out; it is ours.
    assert find(broken, "MTA-STS policy").status is Status.OK


@pytest.fixture(scope="module")
def odd(setup: Setup) -> list[Finding]:
    """Records that exist but are wrong in subtler ways, in an unsigned zone."""
    lines = parse_snippet(setup.snippet)
    rsa_selector, rsa_key = next((owner, rdata) for owner, _, rdata in lines
                                 if "k=rsa" in rdata)
    lines = replace_records(lines, DOMAIN, "MX", f"10 {HOST}.", "20 backup.other.test.")
    lines = replace_records(lines, DOMAIN, "TXT", '"v=spf1 mx -all"', '"v=spf1 a -all"')
    lines = replace_records(lines, HOST, "TXT", '"v=spf1 +all"')
    lines = replace_records(lines, HOST, "A", "127.0.0.1", "127.0.0.9")
    lines = replace_records(lines, HOST, "AAAA", "2001:db8::25")
    testing = "".join(re.findall(r'"([^"]*)"', rsa_key)).replace("k=rsa; ", "k=rsa; t=y; ")
    lines = replace_records(lines, rsa_selector, "TXT",
                            " ".join(f'"{part}"' for part in txt_strings(testing)))
    lines = replace_records(lines, f"_dmarc.{DOMAIN}", "TXT", '"v=DMARC1; p=reject"',
                            '"v=DMARC1; p=none"')
    lines = replace_records(lines, f"_smtp._tls.{DOMAIN}", "TXT")
    lines = replace_records(lines, f"mta-sts.{DOMAIN}", "CNAME")
    lines = replace_records(lines, f"mta-sts.{DOMAIN}", "A", "127.0.0.5")
    lines = replace_records(lines, f"autoconfig.{DOMAIN}", "CNAME")
    lines = replace_records(lines, DOMAIN, "CAA")
    unsigned = [dataclasses.replace(z, signed=False) for z in zones(lines)]
    return check(setup, unsigned, relay_test=False)


def test_subtly_wrong_records(odd: list[Finding]) -> None:
    mx = find(odd, f"{DOMAIN} MX")
    assert mx.status is Status.WARN
    assert "besides mx.example.test, mail also goes to backup.other.test" in mx.message
    spf = find(odd, f"{DOMAIN} TXT")
    assert spf.status is Status.FAIL and "2 SPF records" in spf.message
    assert spf.fix.startswith(f"replace all SPF records of {DOMAIN} with:")
    helo = find(odd, f"{HOST} TXT")
    assert helo.status is Status.WARN
    assert "'v=spf1 +all' allows any address (it passes for 192.0.2.1 too)" in helo.message
    address = find(odd, f"{HOST} A")
    assert address.status is Status.WARN and "also 127.0.0.9" in address.message
    assert "add it to [dns] ipv4 if it is this server" in address.fix
    stray = find(odd, f"{HOST} AAAA")
    assert stray.status is Status.WARN
    assert "has AAAA 2001:db8::25, but [dns] ipv6 is empty" in stray.message
    testing = next(f for f in odd if "._domainkey." in f.subject and f.status is Status.WARN)
    assert "published with t=y (testing)" in testing.message
    dmarc = find(odd, f"_dmarc.{DOMAIN} TXT")
    assert dmarc.status is Status.FAIL and "2 DMARC records" in dmarc.message
    tlsrpt = find(odd, f"_smtp._tls.{DOMAIN} TXT")
    assert tlsrpt.status is Status.WARN and tlsrpt.message.startswith("missing")
    assert tlsrpt.fix == (f'add:\n_smtp._tls.{DOMAIN}. 3600 IN TXT "v=TLSRPTv1; '
                          f'rua=mailto:postmaster@{DOMAIN}"')
    alias = find(odd, f"mta-sts.{DOMAIN} CNAME")
    assert alias.status is Status.WARN and "resolves to 127.0.0.5" in alias.message
    assert find(odd, "MTA-STS policy").status is Status.FAIL
    autoconfig = find(odd, f"autoconfig.{DOMAIN} CNAME")
    assert autoconfig.status is Status.WARN
    assert autoconfig.fix == f"add:\nautoconfig.{DOMAIN}. 3600 IN CNAME {HOST}."
    assert find(odd, f"{DOMAIN} CAA").status is Status.WARN
    # TLSA matches, but without DNSSEC senders ignore it.
    tlsa = find(odd, f"_25._tcp.{HOST} TLSA")
    assert tlsa.status is Status.WARN and "not DNSSEC-signed" in tlsa.message
    assert find(odd, f"_25._tcp.{HOST} TLSA (served key)").status is Status.OK
    assert not any(f.check == "relay" for f in odd)  # --no-relay-test


# -- domains without DNS: one clear verdict, no traceback ------------------------------------

def test_domain_without_dns_and_unanswering_dns(setup: Setup) -> None:
    lines = parse_snippet(setup.snippet)
    zone_list = zones(lines, extra=(Zone("test"),))
    findings = check(setup, zone_list, domains=("nodns.test", "lame.example"),
                     relay_test=False, lame_zones=("lame.example",))
    nodns = [f for f in findings if "nodns.test" in f.subject]
    assert len(nodns) == 1, show(findings)
    assert nodns[0].status is Status.FAIL
    assert nodns[0].message == "nodns.test has no DNS: NXDOMAIN, the name does not exist"
    assert "register nodns.test" in nodns[0].fix
    assert "'mailkeep dns records nodns.test'" in nodns[0].fix
    lame = [f for f in findings if "lame.example" in f.subject]
    assert len(lame) == 1 and lame[0].status is Status.FAIL
    assert lame[0].message.startswith("the DNS of lame.example does not answer: ")
    assert "SERVFAIL" in lame[0].message


def test_cli_no_dns_human_report(setup: Setup) -> None:
    with ThrowawayDNS([Zone("test"), Zone(DOMAIN, f"{HOST}. A 127.0.0.1")]) as dns:
        host, port = dns.resolver_address
        result = _cli(setup.server.config, "check", "nodns.test", "--no-relay-test",
                      "--resolver", f"{host}:{port}", "--ca-file", str(setup.ca.ca_file),
                      "--timeout", str(CHECK_TIMEOUT))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "FAIL  nodns.test DNS: nodns.test has no DNS: NXDOMAIN" in result.stdout
    assert "      fix: register nodns.test" in result.stdout
    assert "\033[" not in result.stdout  # no colour when not on a terminal
    assert result.stdout.rstrip().splitlines()[-1].endswith("FAIL")


def test_cli_refuses_bad_input(setup: Setup) -> None:
    unknown = _cli(setup.server.config, "check", "unknown.test")
    assert unknown.returncode == 2
    assert "unknown.test is not a domain of this server" in unknown.stderr
    resolver = _cli(setup.server.config, "check", "--resolver", "dns.example:53")
    assert resolver.returncode == 2 and "--resolver" in resolver.stderr
    ca = _cli(setup.server.config, "check", "--ca-file", str(setup.server.config))
    assert ca.returncode == 2 and "--ca-file" in ca.stderr


# -- MTA-STS: unreachable and inconsistent policies -------------------------------------------

def _policy_verdicts(setup: Setup, replies: dict[str, Reply | None]) -> dict[str, Finding]:
    """check_policy with the correct zone and each reply (None: the port is closed)."""
    zone_list = zones(parse_snippet(setup.snippet))

    async def main(dns: ThrowawayDNS) -> dict[str, Finding]:
        verdicts = {}
        for label, reply in replies.items():
            https = LocalHTTPS(setup.cert)
            await https.start()
            try:
                if reply is None:
                    await https.stop()  # nothing listens on its port any more
                else:
                    https.serve(MTA_STS_PATH, reply)
                config = setup.checker_config(https.port)
                verdicts[label] = await _one_policy(setup, config, dns)
            finally:
                await https.stop()
        return verdicts

    with ThrowawayDNS(zone_list) as dns:
        return asyncio.run(main(dns))


async def _one_policy(setup: Setup, config: Config, dns: ThrowawayDNS) -> Finding:
    ctx = CheckContext(config, setup.options(dns))
    try:
        return await check_policy(ctx, DOMAIN)
    finally:
        await ctx.close()


def test_mta_sts_policy_unreachable_or_inconsistent(setup: Setup) -> None:
    other_mx = "version: STSv1\r\nmode: enforce\r\nmx: other.example.test\r\nmax_age: 604800\r\n"
    testing = mta_sts_policy_text(setup.config).replace("enforce", "testing")
    verdicts = _policy_verdicts(setup, {
        "closed": None,
        "missing": Reply(status=404, body=b"not here"),
        "html": Reply(body=b"<html>", content_type="text/html"),
        "other mx": Reply(body=other_mx.encode()),
        "testing": Reply(body=testing.encode()),
    })
    closed = verdicts["closed"]
    assert closed.status is Status.FAIL
    assert closed.message.startswith("senders cannot get the policy: ")
    assert "mta-sts.example.test" in closed.fix and "port 443" in closed.fix
    assert verdicts["missing"].status is Status.FAIL
    assert "HTTP status 404" in verdicts["missing"].message
    assert verdicts["html"].status is Status.FAIL
    assert "is not text/plain" in verdicts["html"].message
    mismatch = verdicts["other mx"]
    assert mismatch.status is Status.FAIL
    assert mismatch.message == (f"the MX hosts {HOST} are not in the policy (mx: "
                                "other.example.test): senders refuse to deliver to them "
                                "(RFC 8461 §4.1)")
    testing_verdict = verdicts["testing"]
    assert testing_verdict.status is Status.WARN
    assert "not the policy Mailkeep serves (mode enforce" in testing_verdict.message


# -- certificates: expired, untrusted, wrong name ---------------------------------------------

EXPIRED_CONFIG = """\
hostname = "mx.example.test"
data_dir = "data"

[log]
file = "{log}"

[tls]
cert = "{cert}"
key = "{key}"

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{smtp}"

[[listeners]]
protocol = "imaps"
address = "127.0.0.1:{imaps}"

[domains."example.test"]
"""


async def _tls_findings(config: Config, options: CheckOptions) -> list[Finding]:
    ctx = CheckContext(config, options)
    try:
        return judge_probes(await probe_all(ctx), config.hostname)
    finally:
        await ctx.close()


def test_expired_certificate(setup: Setup, tmp_path: Path) -> None:
    expired = setup.ca.issue([HOST], stem="expired", expired=True)
    smtp, imaps = free_ports(2)
    path = tmp_path / "mailkeep.toml"
    log = tmp_path / "mailkeep.log"
    path.write_text(EXPIRED_CONFIG.format(log=log, cert=expired.cert_file,
                                          key=expired.key_file, smtp=smtp, imaps=imaps))
    server = RunningServer(tmp_path, path, smtp, 0, tmp_path / "unused.sock", log,
                           imaps_port=imaps)
    server.start()
    try:
        options = CheckOptions(resolver="127.0.0.1:9", ca_file=setup.ca.ca_file)
        findings = asyncio.run(_tls_findings(load_config(path), options))
    finally:
        server.stop()
    certificate = find(findings, "TLS certificate")
    assert certificate.status is Status.FAIL
    assert "(smtp)" in certificate.message and "(imaps)" in certificate.message
    assert "expired on" in certificate.message and "clients refuse it" in certificate.message
    assert "mailkeep cert renew" in certificate.fix


SELF_SIGNED_CONFIG = """\
hostname = "mx.example.test"
data_dir = "data"

[log]
file = "{log}"

[policy]
greet_wait = "0.2s"

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{smtp}"

[[listeners]]
protocol = "pop3s"
address = "127.0.0.1:{pop3s}"

[domains."example.test"]
"""


def test_self_signed_pair_both_keys_and_their_tlsa(tmp_path: Path) -> None:
    """Without [tls] the server serves a self-signed ECDSA and RSA certificate: both are
    fetched (the client offers one key type at a time) and both are judged; the TLSA
    records `mailkeep dns records` prints match both served keys."""
    smtp, pop3s = free_ports(2)
    path = tmp_path / "mailkeep.toml"
    log = tmp_path / "mailkeep.log"
    path.write_text(SELF_SIGNED_CONFIG.format(log=log, smtp=smtp, pop3s=pop3s))
    server = RunningServer(tmp_path, path, smtp, 0, tmp_path / "unused.sock", log,
                           pop3s_port=pop3s)
    server.start()
    try:
        records = _cli(path, "dns", "records")
        assert records.returncode == 0, records.stderr
        tlsa = [rdata for owner, rdtype, rdata in parse_snippet(records.stdout)
                if rdtype == "TLSA"]
        assert len(tlsa) == 2
        config = load_config(path)
        zone = Zone(DOMAIN, "\n".join(f"_25._tcp.{HOST}. TLSA {rdata}" for rdata in tlsa),
                    signed=True)

        async def main(dns: ThrowawayDNS) -> list[Finding]:
            host, port = dns.resolver_address
            ctx = CheckContext(config, CheckOptions(resolver=f"{host}:{port}"))
            try:
                probes = await probe_all(ctx)
                return (judge_probes(probes, HOST)
                        + await check_served_tlsa(ctx, probes))
            finally:
                await ctx.close()

        with ThrowawayDNS([zone]) as dns:
            findings = asyncio.run(main(dns))
    finally:
        server.stop()
    ecdsa = find(findings, "TLS certificate (ecdsa")
    rsa = find(findings, "TLS certificate (rsa 2048)")
    for verdict in (ecdsa, rsa):
        assert verdict.status is Status.FAIL
        assert "(smtp)" in verdict.message and "(pop3s)" in verdict.message
        assert "not trusted by clients: self-signed certificate" in verdict.message
    served = find(findings, f"_25._tcp.{HOST} TLSA (served key)")
    assert served.status is Status.OK and served.message == "matches every key port 25 serves"


def test_untrusted_and_wrong_name(setup: Setup) -> None:
    untrusted = asyncio.run(_tls_findings(setup.config, CheckOptions(resolver="127.0.0.1:9")))
    verdict = find(untrusted, "TLS certificate")
    assert verdict.status is Status.FAIL
    assert "not trusted by clients: self-signed certificate in certificate chain" in verdict.message
    assert "[acme]" in verdict.fix
    renamed = dataclasses.replace(setup.config, hostname="mail.other.test")
    wrong = asyncio.run(_tls_findings(renamed, CheckOptions(resolver="127.0.0.1:9",
                                                            ca_file=setup.ca.ca_file)))
    verdict = find(wrong, "TLS certificate")
    assert verdict.status is Status.FAIL
    assert "not valid for mail.other.test (it names mx.example.test" in verdict.message


# -- the open-relay test ----------------------------------------------------------------------

class FakeSmtp:
    """An SMTP server that answers every command with ``rcpt_reply`` after RCPT (and 250
    before): a stand-in for a misconfigured MTA on port 25."""

    def __init__(self, rcpt_reply: bytes) -> None:
        self.rcpt_reply = rcpt_reply
        self.commands: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 relay.test ESMTP\r\n")
        while line := await reader.readline():
            self.commands.append(line.rstrip())
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-relay.test\r\n250 8BITMIME\r\n")
            elif verb == b"RCPT":
                writer.write(self.rcpt_reply)
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def _relay_config(setup: Setup, port: int) -> Config:
    smtp = next(li for li in setup.config.listeners if li.protocol == "smtp")
    listener = dataclasses.replace(smtp, address=f"127.0.0.1:{port}", port=port)
    return dataclasses.replace(setup.config, listeners=(listener,))


@pytest.mark.parametrize("rcpt_reply, status, text", [
    (b"250 2.1.5 ok\r\n", Status.FAIL, "open relay: MAIL FROM:<checker@relay-test.invalid> "
                                       "RCPT TO:<relay-test@example.net> was accepted"),
    (b"451 4.7.1 try later\r\n", Status.WARN, "was refused only temporarily (451 4.7.1"),
    (b"554 5.7.1 relay access denied\r\n", Status.OK, "refused: 554 5.7.1 relay access denied"),
])
def test_open_relay_verdicts(setup: Setup, rcpt_reply: bytes, status: Status,
                             text: str) -> None:
    fake = FakeSmtp(rcpt_reply)

    async def main() -> list[Finding]:
        async with fake as port:
            ctx = CheckContext(_relay_config(setup, port), CheckOptions(resolver="127.0.0.1:9"))
            try:
                return await check_open_relay(ctx)
            finally:
                await ctx.close()

    [finding] = asyncio.run(main())
    assert finding.status is status, finding
    assert text in finding.message
    # The checker never sends DATA, whatever the answer.
    assert not any(c.upper().startswith(b"DATA") for c in fake.commands)
    assert fake.commands[-2:] == [b"RSET", b"QUIT"]
    if status is Status.FAIL:
        assert "stop the server now" in finding.fix


def test_relay_test_is_not_fooled_by_a_refused_sender(setup: Setup) -> None:
    """A server that refuses the test's sender is asked again with the null sender, so
    the answer to RCPT is still seen."""

    class PickySmtp(FakeSmtp):
        async def handle(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 relay.test ESMTP\r\n")
            while line := await reader.readline():
                self.commands.append(line.rstrip())
                if line.startswith(b"MAIL FROM:<checker"):
                    writer.write(b"553 5.1.8 sender domain does not exist\r\n")
                elif line.startswith(b"RCPT"):
                    writer.write(b"250 ok\r\n")
                elif line.startswith(b"QUIT"):
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
            writer.close()

    picky = PickySmtp(b"")

    async def main() -> list[Finding]:
        async with picky as port:
            ctx = CheckContext(_relay_config(setup, port), CheckOptions(resolver="127.0.0.1:9"))
            try:
                return await check_open_relay(ctx)
            finally:
                await ctx.close()

    [finding] = asyncio.run(main())
    assert finding.status is Status.FAIL
    assert "MAIL FROM:<> RCPT TO:<relay-test@example.net> was accepted" in finding.message
    assert b"MAIL FROM:<>" in picky.commands


def test_dns_records_json_matches_the_zone(setup: Setup) -> None:
    result = _cli(setup.server.config, "dns", "records", DOMAIN, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    from_json = {(r["name"] + ".", r["type"]) for r in document["records"]}
    from_zone = {(owner, rdtype) for owner, rdtype, _ in parse_snippet(setup.snippet)}
    assert from_json == from_zone
    dkim = [r for r in document["records"] if r["kind"] == "dkim"]
    assert {r["required"] for r in dkim} == {True} and len(dkim) == 2
    rsa = next(r for r in dkim if "k=rsa" in r["value"])
    # The JSON value is the whole text; the key inside is the one Mailkeep signs with.
    assert base64.b64decode(rsa["value"].partition("p=")[2])
    assert any("not a public domain name" in note for note in document["notes"])
