"""Shared by the Python bench scripts (bench/*.py): loopback ports and the
facts a results file names (machine, commit)."""

import os
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def commit():
    """The checkout's short commit, "(dirty)" when code differs from it."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "--", ".", ":!tuning/results"], cwd=ROOT).returncode != 0
    return rev + (" (dirty)" if dirty else "")


def machine():
    """CPUs, CPU model and kernel, for a results file."""
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return f"{os.cpu_count()} CPUs ({cpu}), {os.uname().release}"


def ringpost_config(hostname, threads, admin_port, smtp_port, spool):
    """The start of a bench server's config: admin and one mx listener on
    loopback, warnings only, the spool; tables the script needs follow."""
    return f"""hostname = "{hostname}"
threads = {threads}
[admin]
address = "127.0.0.1:{admin_port}"
[log]
level = "warn"
[[listener]]
address = "127.0.0.1:{smtp_port}"
kind = "mx"
[spool]
dir = "{spool}"
"""
