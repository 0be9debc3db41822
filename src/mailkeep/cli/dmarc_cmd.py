"""`mailkeep dmarc reports|import|send`: DMARC aggregate reports (RFC 7489 §7.2).

``reports`` summarizes the reports other receivers sent about our domains: per domain,
per source IP and reporting organization, how many messages passed or failed DMARC,
with aligned SPF or DKIM, and what the receivers did with them. This is the view seed
003's author wished for: "who's been sending email on your behalf as well as what passed
and failed".

``import`` stores report files (.xml, .xml.gz, .zip) or messages carrying them (.eml)
by hand; ``send`` builds our own reports now (``--dry-run`` shows them without queueing).
The data lives in ``data_dir/dmarc.db`` (``mailkeep.reports.dmarc_store``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailkeep.cli.config_cmd import HelpFormatter, fail, load_or_report
from mailkeep.cli.main import add_config_argument
from mailkeep.config import Config

#: Default period of ``dmarc reports``: reports whose period ended in the last N days.
DEFAULT_DAYS = 30
#: Longest period ``--days`` accepts (reports imported by hand may be years old).
MAX_DAYS = 36500

#: Most bytes ``import -`` reads from standard input (the ingest limit cuts it further).
MAX_STDIN_BYTES = 64 * 1024 * 1024 + 1

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "dmarc", help="DMARC aggregate reports: summarize, import, send",
        description="DMARC aggregate reports (RFC 7489): what other mail servers report "
        "about mail that uses our domains, and our own daily reports to the domains that "
        "ask for them (rua=).",
        epilog="Examples:\n  mailkeep dmarc reports\n  mailkeep dmarc reports --domain "
        "example.org --days 7\n  mailkeep dmarc import google.com!example.org!1466812800!"
        "1466899199.zip\n  mailkeep dmarc send --dry-run",
        formatter_class=HelpFormatter, allow_abbrev=False)
    commands = parser.add_subparsers(dest="dmarc_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    reports = commands.add_parser(
        "reports", help="summarize the reports received about our domains",
        description="Summarize the aggregate reports received for our domains: per domain, "
        "per source IP and reporting organization, the messages seen, how many passed and "
        "failed DMARC, how many had aligned SPF and DKIM passes, and the disposition the "
        "receivers applied (none, quarantine, reject). A source that fails is either "
        "someone sending as your domain, or a server of yours missing from SPF or not "
        "signing with DKIM.",
        epilog="Examples:\n  mailkeep dmarc reports\n  mailkeep dmarc reports --domain "
        "example.org --days 7\n  mailkeep dmarc reports --json",
        formatter_class=HelpFormatter, allow_abbrev=False)
    reports.add_argument("--domain", metavar="DOMAIN",
                         help="only reports about DOMAIN (or with it as header From)")
    reports.add_argument("--days", metavar="N", type=int, default=DEFAULT_DAYS,
                         help=f"reports whose period ended in the last N days (default "
                         f"{DEFAULT_DAYS})")
    reports.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_config_argument(reports)
    reports.set_defaults(func=cmd_reports)

    importing = commands.add_parser(
        "import", help="store report files or messages by hand",
        description="Store aggregate reports from files: the report as sent (.xml, "
        ".xml.gz, .zip) or a whole message carrying one (.eml). A report already stored "
        "(same organization and report id) is not stored twice. '-' reads standard input.",
        epilog="Examples:\n  mailkeep dmarc import report.xml.gz\n  mailkeep dmarc import "
        "~/Maildir/.DMARC/cur/*",
        formatter_class=HelpFormatter, allow_abbrev=False)
    importing.add_argument("files", nargs="+", metavar="FILE")
    add_config_argument(importing)
    importing.set_defaults(func=cmd_import)

    send = commands.add_parser(
        "send", help="send our aggregate reports now",
        description="Build our aggregate reports for the complete UTC days not reported "
        "yet and queue them to each domain's rua= addresses, as the server does daily "
        "after midnight UTC. --dry-run shows the reports (and where they would go) "
        "without queueing or marking anything.",
        epilog="Examples:\n  mailkeep dmarc send --dry-run\n  mailkeep dmarc send",
        formatter_class=HelpFormatter, allow_abbrev=False)
    send.add_argument("--dry-run", action="store_true",
                      help="show the reports and their XML; queue nothing")
    add_config_argument(send)
    send.set_defaults(func=cmd_send)


# -- helpers -------------------------------------------------------------------------------


def _clean(text: object) -> str:
    """Text from reports (other people's data), safe for a terminal."""
    return _UNPRINTABLE.sub("?", str(text))


def _day(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d")


def _open_store(config: Config):  # -> DmarcStore | None
    from mailkeep.reports.dmarc_store import DmarcStore, DmarcStoreError

    try:
        return DmarcStore.for_data_dir(config.data_dir)
    except DmarcStoreError as exc:
        fail(f"{exc} (run this as the user the server runs as)")
        return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _table(rows: list[tuple[str, ...]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) if i in right else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


# -- reports -------------------------------------------------------------------------------


def summary_data(store: Any, *, since: float, domain: str | None) -> list[dict[str, Any]]:
    """The summary as plain data: one entry per domain with its sources."""
    sources = store.summary(since=since, domain=domain)
    received = store.received_reports(since=since, domain=domain)
    by_domain: dict[str, dict[str, Any]] = {}
    for source in sources:
        entry = by_domain.setdefault(source.domain, {
            "domain": source.domain, "reports": 0, "organizations": [], "messages": 0,
            "dmarc_pass": 0, "dmarc_fail": 0, "begin": source.begin, "end": source.end,
            "sources": []})
        entry["messages"] += source.messages
        entry["dmarc_pass"] += source.dmarc_pass
        entry["dmarc_fail"] += source.dmarc_fail
        entry["begin"] = min(entry["begin"], source.begin)
        entry["end"] = max(entry["end"], source.end)
        entry["sources"].append({
            "source_ip": source.source_ip, "org_name": source.org_name,
            "reports": source.reports, "messages": source.messages,
            "dmarc_pass": source.dmarc_pass, "dmarc_fail": source.dmarc_fail,
            "spf_aligned": source.spf_aligned, "dkim_aligned": source.dkim_aligned,
            "disposition": {"none": source.disposition_none,
                            "quarantine": source.disposition_quarantine,
                            "reject": source.disposition_reject},
            "header_from": list(source.header_from)})
    for report in received:
        entry = by_domain.get(report.domain)
        if entry is None:  # a report without records: still a report
            entry = by_domain.setdefault(report.domain, {
                "domain": report.domain, "reports": 0, "organizations": [], "messages": 0,
                "dmarc_pass": 0, "dmarc_fail": 0, "begin": report.begin, "end": report.end,
                "sources": []})
        entry["reports"] += 1
        if report.org_name not in entry["organizations"]:
            entry["organizations"].append(report.org_name)
    for entry in by_domain.values():
        if entry["reports"] == 0 and entry["sources"]:
            # --domain matched records by header From under another policy domain,
            # whose reports the domain filter left out: count them from the records.
            entry["reports"] = max(s["reports"] for s in entry["sources"])
        entry["organizations"] = sorted({*entry["organizations"],
                                         *(s["org_name"] for s in entry["sources"])})
    return sorted(by_domain.values(), key=lambda e: e["domain"])


def _print_summary(data: list[dict[str, Any]], days: int) -> None:
    if not data:
        print(f"No DMARC aggregate reports received in the last {_plural(days, 'day')}.")
        return
    print(f"DMARC aggregate reports received in the last {_plural(days, 'day')}:")
    header = ("SOURCE IP", "REPORTER", "MESSAGES", "DMARC PASS", "DMARC FAIL", "SPF ALIGNED",
              "DKIM ALIGNED", "DISPOSITION")
    for entry in data:
        print()
        print(f"{_clean(entry['domain'])}: {_plural(entry['reports'], 'report')} from "
              f"{_plural(len(entry['organizations']), 'organization')}, "
              f"{_day(entry['begin'])} to {_day(entry['end'])}: "
              f"{_plural(entry['messages'], 'message')}, {entry['dmarc_pass']} passed DMARC, "
              f"{entry['dmarc_fail']} failed")
        if not entry["sources"]:
            continue
        rows = [header]
        for s in entry["sources"]:
            disposition = ", ".join(f"{name} {count}" for name, count
                                    in s["disposition"].items() if count) or "-"
            rows.append((_clean(s["source_ip"]), _clean(s["org_name"]), str(s["messages"]),
                         str(s["dmarc_pass"]), str(s["dmarc_fail"]), str(s["spf_aligned"]),
                         str(s["dkim_aligned"]), disposition))
        for line in _table(rows, right={2, 3, 4, 5, 6}):
            print(line)


def cmd_reports(args: argparse.Namespace) -> int:
    from mailkeep.trust.dmarc import normalize_domain

    if not 0 < args.days <= MAX_DAYS:
        return fail(f"--days must be between 1 and {MAX_DAYS}")
    domain = None
    if args.domain:
        domain = normalize_domain(args.domain)
        if domain is None:
            return fail(f"{args.domain!r} is not a domain name")
    config = load_or_report(args)
    if config is None:
        return 1
    store = _open_store(config)
    if store is None:
        return 1
    try:
        since = time.time() - args.days * 86400
        data = summary_data(store, since=since, domain=domain)
    finally:
        store.close()
    if args.json:
        json.dump({"days": args.days, "since": int(since), "domains": data}, sys.stdout,
                  indent=2)
        sys.stdout.write("\n")
    else:
        _print_summary(data, args.days)
    return 0


# -- import --------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    from mailkeep.reports.dmarc_ingest import (
        IngestStatus,
        ingest_file,
        ingest_message,
        ingest_report_data,
        looks_like_report_file,
    )

    config = load_or_report(args)
    if config is None:
        return 1
    store = _open_store(config)
    if store is None:
        return 1
    status = 0
    try:
        for name in args.files:
            if name == "-":
                data = sys.stdin.buffer.read(MAX_STDIN_BYTES)
                outcome = (ingest_report_data(data, store, name="-", source="stdin")
                           if looks_like_report_file(data)
                           else ingest_message(data, store, source="stdin"))
            else:
                outcome = ingest_file(Path(name), store)
            shown = _clean(name)
            if outcome.ok:
                what = (f"report {_clean(outcome.report_id)} from {_clean(outcome.org_name)} "
                        f"about {_clean(outcome.domain)}, {_day(outcome.begin)} to "
                        f"{_day(outcome.end)}, {_plural(outcome.records, 'record')}, "
                        f"{_plural(outcome.messages, 'message')}")
                verb = "stored" if outcome.status == IngestStatus.STORED else "already stored"
                print(f"{shown}: {verb}: {what}")
                for warning in outcome.warnings:
                    print(f"{shown}: warning: {_clean(warning)}")
            else:
                print(f"mailkeep dmarc import: {shown}: {outcome.status}: "
                      f"{_clean(outcome.reason)}", file=sys.stderr)
                status = 1
    finally:
        store.close()
    return status


# -- send ----------------------------------------------------------------------------------


def _print_sent(report: Any, dry_run: bool) -> None:
    day = _day(report.begin)
    head = f"{report.policy_domain} {day}: {report.status}"
    if report.records:
        head += (f" ({_plural(report.records, 'record')}, "
                 f"{_plural(report.messages, 'message')}, {report.size} bytes)")
    if report.queue_id:
        head += f", queue id {report.queue_id}"
    print(head)
    for dest in report.destinations:
        if dest.accepted:
            print(f"  to {_clean(dest.address)}")
        else:
            print(f"  not to {_clean(dest.address)}: {_clean(dest.reason)}")
    if report.detail:
        print(f"  {_clean(report.detail)}")
    if dry_run and report.xml:
        print(f"  report id {report.report_id}; the XML:")
        print(report.xml.decode("utf-8", "replace"))


def cmd_send(args: argparse.Namespace) -> int:
    config = load_or_report(args)
    if config is None:
        return 1
    section = getattr(config, "dmarc", None)
    if not args.dry_run and getattr(section, "send_reports", True) is False:
        return fail("sending reports is off ([dmarc] send_reports = false); --dry-run shows "
                    "them")
    store = _open_store(config)
    if store is None:
        return 1
    try:
        return asyncio.run(_send(config, store, args.dry_run))
    finally:
        store.close()


async def _send(config: Config, store: Any, dry_run: bool) -> int:
    from mailkeep.cli.queue_cmd import open_queue, signal_server
    from mailkeep.delivery.pipeline import Pipeline
    from mailkeep.delivery.submission import Submission
    from mailkeep.dkim.keys import DkimKeys
    from mailkeep.outbound.dns import make_resolver
    from mailkeep.reports.dmarc_send import ReportSettings, send_reports

    settings = ReportSettings.from_config(config)
    try:
        resolver = make_resolver(list(config.delivery.resolvers) or None)
    except Exception as exc:  # no /etc/resolv.conf, a bad [delivery] resolvers entry
        return fail(f"cannot set up DNS lookups: {exc}")
    queue = None
    if not dry_run:
        queue, status = open_queue(config.data_dir, "mailkeep dmarc send")
        if queue is None:
            return status
    try:
        def submission() -> Submission:
            return Submission(config, Pipeline(config, store=None), queue,
                              spool_dir=config.data_dir / "queue",
                              dkim=DkimKeys.for_data_dir(config.data_dir))

        try:
            sent = await send_reports(store, submission, settings, resolver=resolver,
                                      dry_run=dry_run)
        except ValueError as exc:
            return fail(str(exc))
    finally:
        if queue is not None:
            queue.close()
    if not sent:
        print("No reports to send: no unreported evaluations of a complete day.")
        return 0
    for report in sent:
        _print_sent(report, dry_run)
    if any(r.status == "queued" for r in sent):
        signal_server(config)
    return 1 if any(r.status in ("error", "deferred", "refused") for r in sent) else 0
