"""Report samples shaped like those big receivers send, and builders for report messages
and evaluations, shared by the DMARC report tests."""

from __future__ import annotations

import base64
import gzip
import io
import zipfile

from mailkeep.trust.dkim_verify import DkimResult, DkimStatus
from mailkeep.trust.dmarc import (
    DiscoveryStatus,
    DmarcResult,
    PolicyDiscovery,
    evaluate,
    parse_record,
)
from mailkeep.trust.spf import SpfResult, SpfStatus

# Seed 003's report, exactly as the blog post shows it (the address masked by its author).
SEED_003 = b"""<feedback>
 <report_metadata>
  <org_name>google.com</org_name>
  <email>noreply-dmarc-support@google.com</email>
  <extra_contact_info>https://support.google.com/a/answer/2466580</extra_contact_info>
  <report_id>121341234</report_id>
  <date_range>
   <begin>1466812800</begin>
   <end>1466899199</end>
  </date_range>
 </report_metadata>
<policy_published>
 <domain>moff.tech</domain>
 <adkim>r</adkim>
 <aspf>r</aspf>
 <p>none</p>
 <sp>none</sp>
 <pct>100</pct>
</policy_published>
 <record>
  <row>
   <source_ip>64.x.x.x</source_ip>
   <count>1</count>
   <policy_evaluated>
    <disposition>none</disposition>
    <dkim>fail</dkim>
    <spf>pass</spf>
   </policy_evaluated>
  </row>
  <identifiers>
   <header_from>moff.tech</header_from>
  </identifiers>
  <auth_results>
   <spf>
    <domain>moff.tech</domain>
    <result>pass</result>
   </spf>
  </auth_results>
 </record>
</feedback>
"""


def google_report(domain: str = "example.org", begin: int = 1767225600,
                  report_id: str = "5717107811868587391") -> bytes:
    """Google's shape: no version, no envelope_from, no SPF scope, np= of DMARCbis."""
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<feedback>
  <report_metadata>
    <org_name>google.com</org_name>
    <email>noreply-dmarc-support@google.com</email>
    <extra_contact_info>https://support.google.com/a/answer/2466580</extra_contact_info>
    <report_id>{report_id}</report_id>
    <date_range>
      <begin>{begin}</begin>
      <end>{begin + 86399}</end>
    </date_range>
  </report_metadata>
  <policy_published>
    <domain>{domain}</domain>
    <adkim>r</adkim>
    <aspf>r</aspf>
    <p>quarantine</p>
    <sp>quarantine</sp>
    <pct>100</pct>
    <np>quarantine</np>
  </policy_published>
  <record>
    <row>
      <source_ip>192.0.2.25</source_ip>
      <count>12</count>
      <policy_evaluated>
        <disposition>none</disposition>
        <dkim>pass</dkim>
        <spf>pass</spf>
      </policy_evaluated>
    </row>
    <identifiers>
      <header_from>{domain}</header_from>
    </identifiers>
    <auth_results>
      <dkim>
        <domain>{domain}</domain>
        <result>pass</result>
        <selector>mk202601r</selector>
      </dkim>
      <dkim>
        <domain>{domain}</domain>
        <result>pass</result>
        <selector>mk202601e</selector>
      </dkim>
      <spf>
        <domain>{domain}</domain>
        <result>pass</result>
      </spf>
    </auth_results>
  </record>
  <record>
    <row>
      <source_ip>203.0.113.66</source_ip>
      <count>3</count>
      <policy_evaluated>
        <disposition>quarantine</disposition>
        <dkim>fail</dkim>
        <spf>fail</spf>
      </policy_evaluated>
    </row>
    <identifiers>
      <header_from>{domain}</header_from>
    </identifiers>
    <auth_results>
      <spf>
        <domain>spammer.example</domain>
        <result>softfail</result>
      </spf>
    </auth_results>
  </record>
</feedback>
""".encode()


def microsoft_report(domain: str = "example.org", begin: int = 1767225600,
                     report_id: str = "3f0c3b0e6a8d4c1f9e2b7a5d4c3b2a10") -> bytes:
    """Outlook.com's shape: xsd/xsi namespace declarations, version, envelope_to,
    envelope_from, SPF scope, IPv6 sources, a local_policy override."""
    return f"""<?xml version="1.0"?>
<feedback xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <version>1.0</version>
  <report_metadata>
    <org_name>Enterprise Outlook</org_name>
    <email>dmarcreport@microsoft.com</email>
    <report_id>{report_id}</report_id>
    <date_range>
      <begin>{begin}</begin>
      <end>{begin + 86400}</end>
    </date_range>
  </report_metadata>
  <policy_published>
    <domain>{domain}</domain>
    <adkim>r</adkim>
    <aspf>r</aspf>
    <p>reject</p>
    <sp>reject</sp>
    <pct>100</pct>
    <fo>0</fo>
  </policy_published>
  <record>
    <row>
      <source_ip>2001:db8:400::1f</source_ip>
      <count>1</count>
      <policy_evaluated>
        <disposition>reject</disposition>
        <dkim>fail</dkim>
        <spf>fail</spf>
      </policy_evaluated>
    </row>
    <identifiers>
      <envelope_to>outlook.com</envelope_to>
      <envelope_from>{domain}</envelope_from>
      <header_from>{domain}</header_from>
    </identifiers>
    <auth_results>
      <spf>
        <domain>{domain}</domain>
        <scope>mfrom</scope>
        <result>fail</result>
      </spf>
    </auth_results>
  </record>
  <record>
    <row>
      <source_ip>192.0.2.25</source_ip>
      <count>4</count>
      <policy_evaluated>
        <disposition>none</disposition>
        <dkim>pass</dkim>
        <spf>fail</spf>
        <reason>
          <type>local_policy</type>
          <comment>arc=pass</comment>
        </reason>
      </policy_evaluated>
    </row>
    <identifiers>
      <envelope_to>hotmail.com</envelope_to>
      <envelope_from>lists.example.net</envelope_from>
      <header_from>{domain}</header_from>
    </identifiers>
    <auth_results>
      <dkim>
        <domain>{domain}</domain>
        <selector>mk202601r</selector>
        <result>pass</result>
      </dkim>
      <spf>
        <domain>lists.example.net</domain>
        <scope>mfrom</scope>
        <result>Unknown</result>
      </spf>
    </auth_results>
  </record>
</feedback>
""".encode()


def dmarcbis_report(domain: str = "example.org", begin: int = 1767225600) -> bytes:
    """The DMARCbis aggregate-reporting draft: a default namespace, generator, np,
    testing, discovery_method, human_result and extensions; no pct."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">
  <version>1.0</version>
  <report_metadata>
    <org_name>receiver.example</org_name>
    <email>dmarc@receiver.example</email>
    <report_id>bis-0001</report_id>
    <date_range><begin>{begin}</begin><end>{begin + 86399}</end></date_range>
    <generator>Example Reporter 2.1</generator>
  </report_metadata>
  <policy_published>
    <domain>{domain}</domain>
    <discovery_method>treewalk</discovery_method>
    <p>reject</p>
    <sp>quarantine</sp>
    <np>reject</np>
    <testing>n</testing>
  </policy_published>
  <extension><ext:info xmlns:ext="urn:example:ext">ignored</ext:info></extension>
  <record>
    <row>
      <source_ip>198.51.100.7</source_ip>
      <count>5</count>
      <policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>pass</spf></policy_evaluated>
    </row>
    <identifiers>
      <envelope_from>{domain}</envelope_from>
      <header_from>{domain}</header_from>
    </identifiers>
    <auth_results>
      <dkim><domain>{domain}</domain><selector>s1</selector><result>pass</result><human_result>good</human_result></dkim>
      <spf><domain>{domain}</domain><scope>mfrom</scope><result>pass</result><human_result>ok</human_result></spf>
    </auth_results>
  </record>
</feedback>
""".encode()


def zipped(data: bytes, name: str = "report.xml", *, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
        for other, content in (extra or {}).items():
            archive.writestr(other, content)
    return buffer.getvalue()


def report_message(attachment: bytes, *, content_type: str, filename: str,
                   subject: str = "Report domain: example.org Submitter: google.com "
                   "Report-ID: 5717107811868587391") -> bytes:
    """A report message as Google and Microsoft send them: a text part and the report."""
    encoded = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    return (b"From: noreply-dmarc-support@google.com\r\n"
            b"To: dmarc-reports@example.org\r\n"
            + f"Subject: {subject}\r\n".encode()
            + b"MIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="000000000000b0b1"\r\n\r\n'
            b"--000000000000b0b1\r\n"
            b'Content-Type: text/plain; charset="UTF-8"\r\n\r\n'
            b"This is an aggregate report from google.com.\r\n\r\n"
            b"--000000000000b0b1\r\n"
            + f'Content-Type: {content_type}; name="{filename}"\r\n'.encode()
            + f'Content-Disposition: attachment; filename="{filename}"\r\n'.encode()
            + b"Content-Transfer-Encoding: base64\r\n\r\n"
            + encoded
            + b"--000000000000b0b1--\r\n")


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data)


POLICY = ("v=DMARC1; p=reject; rua=mailto:dmarc@sender.test,"
          "mailto:agg@collector.test!100k")


def dmarc_result(from_domain: str, *, spf: SpfResult | None, dkim: list[DkimResult],
                 record: str = POLICY, record_domain: str | None = None,
                 random: float = 0.0) -> DmarcResult:
    """A real DMARC verdict (trust.dmarc.evaluate) for a policy record, without DNS."""
    parsed = parse_record(record)
    found = PolicyDiscovery(DiscoveryStatus.FOUND, from_domain, record=parsed,
                            record_domain=record_domain or from_domain)
    spf_input = (str(spf.result), spf.domain) if spf is not None else None
    dkim_input = [(str(d.result), d.domain) for d in dkim]
    return evaluate(from_domain, spf_input, dkim_input, found, random=lambda: random)


def spf(result: str, domain: str, identity: str = "mailfrom") -> SpfResult:
    return SpfResult(result=SpfStatus(result), domain=domain, identity=identity)


def dkim(result: str, domain: str, selector: str = "s1") -> DkimResult:
    return DkimResult(result=DkimStatus(result), domain=domain, selector=selector)
