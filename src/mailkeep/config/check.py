"""Checks of a loaded configuration against the machine it runs on.

``load_config`` only looks at the text of ``mailkeep.toml``. ``check_config`` adds what
``mailkeep config check`` should also tell an administrator before ``serve`` finds out:
the certificate files, the ``run_as`` user, and the password file - unknown or damaged
hashes (errors: those users cannot log in), weak schemes such as ``{PLAIN}`` (warnings),
accounts without a password and passwords without an account.
"""

from __future__ import annotations

import os
import pwd

from mailkeep.auth.passwd_file import PasswdFile, PasswdFileError
from mailkeep.auth.passwords import PasswordHashError, password_scheme, weak_scheme
from mailkeep.config.schema import Config, ConfigIssue


def check_config(config: Config) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """``(errors, warnings)`` found on this machine; ``config.warnings`` are not repeated."""
    errors: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    label = str(config.path)

    for key, path in (("tls.cert", config.tls.cert), ("tls.key", config.tls.key)):
        if path is not None and not os.access(path, os.R_OK):
            reason = "does not exist" if not path.exists() else "is not readable"
            errors.append(ConfigIssue(label, key, f"{path} {reason}"))

    if config.run_as:
        try:
            pwd.getpwnam(config.run_as)
        except KeyError:
            errors.append(ConfigIssue(label, "run_as", f"there is no user {config.run_as!r} on "
                                      "this system", allowed="an existing system user"))

    if not config.data_dir.exists():
        warnings.append(ConfigIssue(label, "data_dir", f"{config.data_dir} does not exist yet; "
                                    "the server creates it"))
        return errors, warnings

    passwd_label = str(config.passwd_file)
    passwd = PasswdFile(config.passwd_file)
    try:
        entries = {entry.user: entry for entry in passwd.entries()}
        problems = passwd.problems()
    except PasswdFileError as exc:
        errors.append(ConfigIssue(passwd_label, "", str(exc)))
        return errors, warnings
    for number, problem in problems:
        warnings.append(ConfigIssue(passwd_label, f"line {number}", problem))
    for address in config.accounts:
        entry = entries.get(address)
        if entry is None or not entry.hash:
            warnings.append(ConfigIssue(passwd_label, address, "has no password and cannot log "
                                        f"in; set one with 'mailkeep account passwd {address}'"))
            continue
        try:
            scheme = password_scheme(entry.hash)
        except PasswordHashError as exc:
            errors.append(ConfigIssue(passwd_label, address, f"{exc}; the account cannot log in "
                                      "until its password is set again"))
            continue
        if weak_scheme(entry.hash):
            warnings.append(ConfigIssue(passwd_label, address, f"the password is stored with "
                                        f"the weak scheme {{{scheme}}}; it is rehashed at the next "
                                        "login, or set it now with 'mailkeep account passwd'"))
    for user in entries:
        if user not in config.accounts:
            warnings.append(ConfigIssue(passwd_label, user, "has a password but no account in "
                                        "the configuration; it cannot log in"))
    return errors, warnings
