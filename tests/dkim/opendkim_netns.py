"""Run opendkim-testmsg against a real DNS server, inside a private network namespace.

opendkim-testmsg (Debian opendkim-tools 2.11) verifies a message read on stdin and has no
option to take public keys from a file: libopendkim asks the system resolver (glibc
``res_nquery``), which reads /etc/resolv.conf and always talks to port 53. So this
script is started by the tests under ``unshare --net --mount`` and, inside that private
namespace (nothing outside it is touched):

1. brings up the namespace's own loopback interface;
2. bind-mounts a resolv.conf naming 127.0.0.1 over /etc/resolv.conf (this mount
   namespace only);
3. starts NSD (Debian nsd, a real authoritative server) on 127.0.0.1:53 serving the
   zone files in WORKDIR (the DKIM TXT records the tests produced);
4. reads message file names on stdin, one per line, runs ``opendkim-testmsg`` on each
   and answers one JSON line ``{"status": N, "stderr": "..."}`` per message;
5. stops NSD at end of input.

Usage: unshare --net --mount [--map-root-user] python opendkim_netns.py WORKDIR ZONE...
"""

from __future__ import annotations

import fcntl
import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
NSD_START_TIMEOUT = 15.0
VERIFY_TIMEOUT = 20.0


def nsd_config(workdir: Path, zones: list[str]) -> str:
    lines = [
        "server:",
        "  ip-address: 127.0.0.1",
        "  port: 53",
        '  username: ""',
        '  chroot: ""',
        '  database: ""',
        f'  zonesdir: "{workdir}"',
        f'  pidfile: "{workdir}/nsd.pid"',
        f'  xfrdfile: "{workdir}/xfrd.state"',
        f'  zonelistfile: "{workdir}/zone.list"',
        f'  logfile: "{workdir}/nsd.log"',
        "  server-count: 1",
        "  verbosity: 1",
        "remote-control:",
        "  control-enable: no",
    ]
    for zone in zones:
        lines += ["zone:", f'  name: "{zone}"', f'  zonefile: "{zone}.zone"']
    return "\n".join(lines) + "\n"


def loopback_up() -> None:
    """``ip link set lo up`` without needing iproute2: SIOCGIFFLAGS / SIOCSIFFLAGS
    (netdevice(7)). A new network namespace starts with lo down."""
    request = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = request.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, request.pack(b"lo", 0)))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, request.pack(b"lo", flags | IFF_UP))


def wait_for_dns(deadline: float, nsd: subprocess.Popen[bytes], log: Path) -> None:
    while time.monotonic() < deadline:
        if nsd.poll() is not None:
            sys.exit(f"nsd exited with status {nsd.returncode}: {log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", 53), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nsd did not listen on 127.0.0.1:53 within {NSD_START_TIMEOUT}s")


def main() -> None:
    workdir = Path(sys.argv[1]).resolve()
    zones = sys.argv[2:]
    loopback_up()
    resolv = workdir / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n")
    subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)
    conf = workdir / "nsd.conf"
    conf.write_text(nsd_config(workdir, zones))
    subprocess.run(["nsd-checkconf", str(conf)], check=True)
    nsd = subprocess.Popen(["nsd", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                           stderr=open(workdir / "nsd.stderr", "wb"))
    try:
        wait_for_dns(time.monotonic() + NSD_START_TIMEOUT, nsd, workdir / "nsd.log")
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            path = line.strip()
            if not path:
                continue
            with open(path, "rb") as message:
                try:
                    result = subprocess.run(["opendkim-testmsg"], stdin=message,
                                            capture_output=True, timeout=VERIFY_TIMEOUT)
                    answer = {"status": result.returncode,
                              "stderr": result.stderr.decode("utf-8", "replace"),
                              "stdout": result.stdout.decode("utf-8", "replace")}
                except subprocess.TimeoutExpired:
                    answer = {"status": -1, "stderr": f"timed out after {VERIFY_TIMEOUT}s",
                              "stdout": ""}
            print(json.dumps(answer), flush=True)
    finally:
        nsd.terminate()
        try:
            nsd.wait(timeout=5)
        except subprocess.TimeoutExpired:
            nsd.kill()
            nsd.wait(timeout=5)


if __name__ == "__main__":
    main()
