"""Who this process is, as its records in a shared store say: host, pid, record ids.

The pid is read again in a forked child (see :mod:`.lifecycle`): a child is another
process, with hold and presence records of its own.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import uuid

from . import lifecycle

__all__ = ["HOST", "command", "new_id", "pid", "who"]

HOST = os.environ.get("MAINTGUARD_HOST", "").strip() or socket.gethostname()
"""This machine's name in records: ``MAINTGUARD_HOST`` when set (a pod's name, say), else
the host name."""
_pid = os.getpid()


def pid() -> int:
    """This process's id (the child's own after a fork)."""
    return _pid


def new_id() -> str:
    """A new record id, unique across hosts, processes and time: ``host:pid:random``."""
    return f"{HOST}:{_pid}:{uuid.uuid4().hex[:12]}"


def who() -> str:
    """``user@host``: who made a change, as records of it say."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in the environment nor the password database
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{HOST}"


def command(limit: int = 200) -> str:
    """This process's command line (``sys.argv`` joined by spaces), cut to ``limit``
    characters: what made a change, as the audit trail says."""
    return " ".join(sys.argv)[:limit]


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


lifecycle.after_fork("identity", _after_fork_in_child)
