"""Free TCP ports: a rendezvous for a process group (learner ranks, an NCCL weight sync) or a local Ray node."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on this host now (bound to 127.0.0.1 and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
