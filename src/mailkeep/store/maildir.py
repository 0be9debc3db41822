"""Maildir++ import and export, in the layout Dovecot writes.

Layout (Maildir: https://cr.yp.to/proto/maildir.html; Maildir++ as Dovecot documents it):

* INBOX is the root: ``cur/ new/ tmp/``; every other mailbox is a directory ``.<name>`` at
  the root, with the hierarchy separator "." (``.Archive.2024`` is "Archive/2024") and each
  level's name in modified UTF-7 (RFC 3501 §5.1.3), as Dovecot stores it on disk. Subfolders
  contain an empty ``maildirfolder`` file.
* A file name is ``<unique>:2,<flags>``; Dovecot may put ``,S=<size>,W=<vsize>`` in the
  unique part and ``,<extra>`` after the flags. Flags are letters in ASCII order: D (Draft),
  F (Flagged), P (Passed: mapped to the keyword ``$Forwarded``, RFC 5788), R (Replied:
  \\Answered), S (Seen), T (Trashed: \\Deleted), and a-z for keywords, named per folder in
  ``dovecot-keywords`` ("<n> <name>" lines, n = 0 for "a").
* The file's mtime is the INTERNALDATE. Files have LF line ends; the store keeps CRLF.
* ``subscriptions`` at the root lists subscribed names; Dovecot's version 2 format starts
  with "V\\t2\\n\\n" and separates levels with a tab.

A mailbox name containing "." (legal here, since our separator is "/") has no exact
Maildir++ spelling; export writes the "." of such a name as "&AC4-", a modified UTF-7
encoding that Mailkeep's import (and lenient readers) decode back to ".".
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

from mailkeep.durable import fsync_dir
from mailkeep.progress import Progress
from mailkeep.store import mutf7
from mailkeep.store.api import INBOX, SEPARATOR, ImportItem, MailboxError, Store, StoreLimits
from mailkeep.store.names import canonical_mailbox_name
from mailkeep.store.transfer import (
    ExportReport,
    ImportBatcher,
    ImportReport,
    clean_keywords,
    crlf_to_lf,
    lf_to_crlf,
    prepare_export_dir,
)

logger = logging.getLogger("mailkeep.store")

# Maildir standard flags (letters in the info part after ":2,") and the IMAP flags they
# stand for.
FLAG_LETTERS = {"D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded", "R": "\\Answered",
                "S": "\\Seen", "T": "\\Deleted"}
LETTER_FOR_FLAG = {flag.lower(): letter for letter, flag in FLAG_LETTERS.items()}
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Some tools (mbsync with InfoDelimiter "!", Windows ports) write "!" or ";" instead of ":".
_INFO = re.compile(r"^(?P<unique>.+?)[:!;]2,(?P<flags>[^,]*)(?:,.*)?$")
_KEYWORDS_LINE = re.compile(r"^(\d+) (.+)$")
#: The largest dovecot-keywords / subscriptions file read (they are tiny in practice).
MAX_CONTROL_FILE_BYTES = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = StoreLimits().max_message_bytes


# -- names --------------------------------------------------------------------------------


def folder_to_mailbox(dirname: str) -> str:
    """".Archive.2024" -> "Archive/2024" (levels decoded from modified UTF-7)."""
    if not dirname.startswith(".") or dirname in (".", ".."):
        raise ValueError(f"{dirname!r} is not a Maildir++ folder")
    levels = dirname[1:].split(".")
    decoded = []
    for level in levels:
        try:
            text = mutf7.decode(level, strict=False)
        except ValueError:
            text = level  # not modified UTF-7 after all: take it literally
        # Characters our names refuse (LIST wildcards, control characters) become "_".
        text = "".join("_" if c in "*%/" or ord(c) < 0x20 or ord(c) == 0x7F else c
                       for c in text)
        decoded.append(text if text not in ("", ".", "..") else "_")
    return SEPARATOR.join(decoded)


def mailbox_to_folder(name: str) -> str:
    """"Archive/2024" -> ".Archive.2024"; INBOX is the root (returned as "")."""
    if name == INBOX:
        return ""
    levels = [mutf7.encode(level).replace(".", "&AC4-") for level in name.split(SEPARATOR)]
    return "." + ".".join(levels)


def parse_info(filename: str, keyword_names: dict[str, str]) -> tuple[str, list[str]]:
    """Split a Maildir file name into its unique part and IMAP flags."""
    match = _INFO.match(filename)
    if match is None:
        return filename, []  # new/ mail has no info part
    flags: list[str] = []
    for letter in match.group("flags"):
        if letter in FLAG_LETTERS:
            flags.append(FLAG_LETTERS[letter])
        elif letter in keyword_names:
            flags.append(keyword_names[letter])
    return match.group("unique"), flags


def read_dovecot_keywords(folder: Path) -> dict[str, str]:
    """Letter -> keyword name from a folder's ``dovecot-keywords`` file."""
    path = folder / "dovecot-keywords"
    try:
        with path.open("rb") as f:
            text = f.read(MAX_CONTROL_FILE_BYTES).decode("utf-8", "replace")
    except FileNotFoundError:
        return {}
    names = {}
    for line in text.splitlines():
        match = _KEYWORDS_LINE.match(line.strip())
        if match and int(match.group(1)) < len(KEYWORD_LETTERS):
            names[KEYWORD_LETTERS[int(match.group(1))]] = match.group(2).strip()
    return names


def _tab_unescape(text: str) -> str:
    # Dovecot's tab-escaping: \001 followed by 1, t, r, n stands for \001, tab, CR, LF.
    out, i = [], 0
    while i < len(text):
        if text[i] == "\x01" and i + 1 < len(text):
            out.append({"1": "\x01", "t": "\t", "r": "\r", "n": "\n"}.get(text[i + 1],
                                                                         text[i + 1]))
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _tab_escape(text: str) -> str:
    return (text.replace("\x01", "\x011").replace("\t", "\x01t").replace("\r", "\x01r")
            .replace("\n", "\x01n"))


def read_subscriptions(root: Path) -> list[str]:
    """Mailbox names from Dovecot's ``subscriptions`` file (version 1 or 2)."""
    try:
        with (root / "subscriptions").open("rb") as f:
            text = f.read(MAX_CONTROL_FILE_BYTES).decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    version2 = text.startswith("V\t2\n")
    lines = text.split("\n")[2:] if version2 else text.split("\n")
    names = []
    for line in lines:
        if not line.strip():
            continue
        if version2:
            levels = [_tab_unescape(level) for level in line.split("\t")]
        else:
            # Version 1 writes names with the namespace separator, "." for Maildir++.
            levels = line.split("/") if "/" in line else line.split(".")
        decoded = []
        for level in levels:
            try:
                decoded.append(mutf7.decode(level, strict=False))
            except ValueError:
                decoded.append(level)
        names.append(SEPARATOR.join(decoded))
    return names


# -- import -------------------------------------------------------------------------------


def maildir_folders(root: Path) -> list[tuple[str, Path]]:
    """(mailbox name, folder path) for INBOX and every Maildir++ subfolder, sorted."""
    folders = []
    if (root / "cur").is_dir() or (root / "new").is_dir():
        folders.append((INBOX, root))
    with os.scandir(root) as entries:
        subdirs = sorted(e.name for e in entries
                         if e.name.startswith(".") and e.name not in (".", "..")
                         and e.is_dir(follow_symlinks=False))
    for name in subdirs:
        path = root / name
        if (path / "cur").is_dir() or (path / "new").is_dir():
            folders.append((folder_to_mailbox(name), path))
    return folders


def _message_files(folder: Path) -> Iterator[Path]:
    """Message files of one folder, oldest first (Maildir names start with the delivery
    time), so that imported UIDs follow arrival order. Only this folder's directory
    listing is held in memory, never message data."""
    for sub in ("cur", "new"):
        try:
            with os.scandir(folder / sub) as entries:
                names = [e.name for e in entries
                         if not e.name.startswith(".") and e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            continue
        names.sort(key=_arrival_key)
        for name in names:
            yield folder / sub / name


def _chunked(paths: Iterator[Path], size: int) -> Iterator[list[Path]]:
    chunk: list[Path] = []
    for path in paths:
        chunk.append(path)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _arrival_key(name: str) -> tuple[int, str]:
    head = name.split(".", 1)[0]
    return (int(head) if head.isdigit() else 0, name)


def count_messages(root: Path) -> int:
    total = 0
    for _, folder in maildir_folders(root):
        for sub in ("cur", "new"):
            with contextlib.suppress(FileNotFoundError), os.scandir(folder / sub) as entries:
                total += sum(1 for e in entries if not e.name.startswith("."))
    return total


async def import_maildir(store: Store, account: str, source: Path, *,
                         progress: Progress | None = None, limit: int | None = None,
                         max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                         mailbox_prefix: str | None = None,
                         folders: Sequence[tuple[str, Path]] | None = None) -> ImportReport:
    """Import a Maildir++ tree into ``account``; resumable, never imports a file twice.

    ``limit`` stops after that many new messages (the report says ``incomplete``); run
    again to continue. ``mailbox_prefix`` puts everything below that mailbox instead.
    ``folders`` replaces the Maildir++ scan of ``source`` with (mailbox, folder) pairs, for
    other layouts (Dovecot's LAYOUT=fs, see ``mailkeep.migrate.dovecot``); subscriptions
    are still read from ``source``.
    """
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is not a directory")
    report = ImportReport()
    batcher = ImportBatcher(store, account, report, progress=progress, limit=limit)
    for mailbox, folder in (maildir_folders(source) if folders is None else folders):
        target = mailbox if mailbox_prefix is None else (
            f"{mailbox_prefix}{SEPARATOR}{mailbox}" if mailbox != INBOX else mailbox_prefix)
        try:
            target = canonical_mailbox_name(target)
        except MailboxError as exc:
            report.error(f"folder {folder.name!r} skipped: {exc}")
            continue
        keyword_names = read_dovecot_keywords(folder)
        for chunk in _chunked(_message_files(folder), 500):
            parsed = [(path, *parse_info(path.name, keyword_names)) for path in chunk]
            keys = [f"maildir:{target}:{unique}" for _, unique, _ in parsed]
            done = batcher.already_imported(keys)
            for (path, _unique, flags), key in zip(parsed, keys, strict=True):
                if key in done:
                    report.skipped += 1
                elif batcher.full:
                    report.incomplete = True
                    break
                else:
                    item = _read_item(path, target, flags, key, max_message_bytes, report)
                    if item is not None:
                        await batcher.add(item)
                if progress is not None:
                    progress.update(1)
            if report.incomplete:
                break
        if report.incomplete:
            break
    await batcher.finish()
    for name in read_subscriptions(source):
        with contextlib.suppress(MailboxError):
            store.subscribe_mailbox(account, name)
    return report


def _read_item(path: Path, mailbox: str, flags: list[str], key: str, max_bytes: int,
               report: ImportReport) -> ImportItem | None:
    try:
        with path.open("rb") as f:
            stat = os.fstat(f.fileno())
            if stat.st_size > max_bytes:
                report.error(f"{path}: {stat.st_size} bytes is over the limit of {max_bytes}")
                return None
            data = f.read()
    except FileNotFoundError:
        # Renamed by a mail client between listing and reading (a flag change): the next
        # run picks it up under its new name, same unique part, same key.
        report.error(f"{path}: disappeared while importing; run the import again")
        return None
    except OSError as exc:
        report.error(f"{path}: {exc.strerror or exc}")
        return None
    system = [f for f in flags if f.startswith("\\")]
    keywords = clean_keywords(f for f in flags if not f.startswith("\\"))
    return ImportItem(mailbox=mailbox, source=lf_to_crlf(data), flags=tuple(system + keywords),
                      internal_date=stat.st_mtime, key=key)


# -- export -------------------------------------------------------------------------------


def _safe_host() -> str:
    # The Maildir spec: "/" and ":" in the host part are written as \057 and \072.
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


def export_maildir(store: Store, account: str, dest: Path, *,
                   progress: Progress | None = None) -> ExportReport:
    """Write every mailbox of ``account`` as a Maildir++ tree at ``dest`` (which must not
    exist or be empty). Consistent: taken from one snapshot of the store."""
    dest = prepare_export_dir(dest)
    report = ExportReport()
    host = _safe_host()
    with store.snapshot(account) as snap:
        mailboxes = snap.list_mailboxes()
        if progress is not None:
            progress.set_total(sum(m.messages for m in mailboxes))
        for box in mailboxes:
            folder = dest / mailbox_to_folder(box.name) if box.name != INBOX else dest
            for sub in ("cur", "new", "tmp"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            if box.name != INBOX:
                (folder / "maildirfolder").touch()
            letters = _keyword_letters(box.keywords, report, box.name)
            if letters:
                (folder / "dovecot-keywords").write_text(
                    "".join(f"{KEYWORD_LETTERS.index(letter)} {keyword}\n"
                            for keyword, letter in letters.items()))
            for info in snap.iter_messages(box.name):
                with snap.open_message(box.name, info.uid) as f:
                    data = crlf_to_lf(f.read())
                flags = _info_flags(info.flags, letters)
                unique = (f"{int(info.internal_date)}.M{info.uid}V{box.uidvalidity}.{host}"
                          f",S={len(data)},W={info.size}")
                tmp = folder / "tmp" / unique
                with tmp.open("wb") as out:
                    out.write(data)
                os.utime(tmp, (info.internal_date, info.internal_date))
                os.rename(tmp, folder / "cur" / f"{unique}:2,{flags}")
                report.exported += 1
                if progress is not None:
                    progress.update(1)
            report.mailboxes += 1
        _write_subscriptions(dest, snap.subscriptions())
    # One sync for the whole tree instead of an fsync per file: the export is only complete
    # (and the command returns) once everything is on disk.
    os.sync()
    fsync_dir(dest)
    return report


def _keyword_letters(keywords: tuple[str, ...], report: ExportReport,
                     mailbox: str) -> dict[str, str]:
    usable = [k for k in keywords if k.lower() != "$forwarded"]
    if len(usable) > len(KEYWORD_LETTERS):
        report.warnings.append(f"{mailbox}: {len(usable) - len(KEYWORD_LETTERS)} keywords "
                               "dropped (Maildir holds at most 26 per folder)")
    return dict(zip(usable, KEYWORD_LETTERS, strict=False))


def _info_flags(flags: tuple[str, ...], letters: dict[str, str]) -> str:
    out = []
    for flag in flags:
        letter = LETTER_FOR_FLAG.get(flag.lower()) or letters.get(flag)
        if letter:
            out.append(letter)
    return "".join(sorted(set(out)))  # the Maildir spec wants ASCII order


def _write_subscriptions(dest: Path, names: list[str]) -> None:
    lines = ["\t".join(_tab_escape(mutf7.encode(level)) for level in name.split(SEPARATOR))
             for name in names]
    (dest / "subscriptions").write_text("V\t2\n\n" + "".join(f"{line}\n" for line in lines))
