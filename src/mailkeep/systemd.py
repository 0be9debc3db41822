"""The systemd unit that runs `mailkeep serve`.

One template for the file shipped in the repository (packaging/mailkeep.service, the
defaults) and the one `mailkeep quickstart` writes with the paths it chose; a test keeps
the two in step.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_EXECUTABLE = "/usr/local/bin/mailkeep"
DEFAULT_CONFIG = "/etc/mailkeep/mailkeep.toml"
DEFAULT_DATA_DIR = "/var/lib/mailkeep"

UNIT_TEMPLATE = """\
# systemd unit for Mailkeep. Install:
#   cp mailkeep.service /etc/systemd/system/ && systemctl daemon-reload
#   systemctl enable --now mailkeep
# Mailkeep starts as root only to bind ports 25/80/443/465/587/993/995, then switches to
# the config's run_as user. `systemctl reload mailkeep` re-reads the config (SIGHUP).
[Unit]
Description=Mailkeep mail server
Documentation=file:///usr/share/doc/mailkeep/README.md
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={executable} serve --config {config}
ExecReload=/bin/kill -HUP $MAINPID
KillSignal=SIGTERM
# The server stops its delivery process itself (deliveries in flight get up to 30 s,
# the whole stop at most about 60 s): SIGTERM goes to the server only, SIGKILL to both
# if the stop takes longer than this.
KillMode=mixed
TimeoutStopSec=90
Restart=on-failure
RestartSec=5
LimitNOFILE=65536
# Hardening: the server needs its data directory and the certificate files, nothing else.
ProtectSystem=strict
ReadWritePaths={data_dir} /run/mailkeep -/var/log/mailkeep
RuntimeDirectory=mailkeep
ProtectHome=true
PrivateTmp=true
NoNewPrivileges=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectControlGroups=true
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=true
LockPersonality=true
MemoryDenyWriteExecute=true
CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER

[Install]
WantedBy=multi-user.target
"""


def unit_text(executable: str | Path = DEFAULT_EXECUTABLE, config: str | Path = DEFAULT_CONFIG,
              data_dir: str | Path = DEFAULT_DATA_DIR) -> str:
    """The unit for ``executable serve --config config``, writable in ``data_dir`` only.

    systemd splits ExecStart on spaces and ReadWritePaths too: paths with whitespace are
    refused rather than written into a unit that would do something else.
    """
    values = {"executable": str(executable), "config": str(config), "data_dir": str(data_dir)}
    for name, value in values.items():
        if not value.startswith("/") or any(ch.isspace() or ch in "\"'\\%$;" for ch in value):
            raise ValueError(f"{name} {value!r}: systemd units need an absolute path without "
                             "spaces, quotes, backslashes, % or $")
    return UNIT_TEMPLATE.format(**values)
