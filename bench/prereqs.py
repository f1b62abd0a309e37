"""Set-up the bench does for itself before it runs: redis-server from Debian when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from bench.systems import REDIS_SERVER

APT_TIMEOUT_S = 600.0


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_redis_server(needed: bool) -> None:
    """Install Debian's redis-server when it is missing and needed, if this process is root.

    Without root nothing is installed: the Redis rows are then skipped with the install
    command in their reason.
    """
    if not needed or shutil.which(REDIS_SERVER) is not None:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        progress("redis-server is not installed; Redis rows will be skipped.")
        progress("Install it with: sudo apt-get install -y redis-server")
        return

    progress("redis-server is not installed; running apt-get install -y redis-server")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]
    try:
        if subprocess.run(install, env=env, timeout=APT_TIMEOUT_S).returncode != 0:
            # A fresh container has no package lists yet.
            subprocess.run(["apt-get", "update"], env=env, timeout=APT_TIMEOUT_S, check=True)
            subprocess.run(install, env=env, timeout=APT_TIMEOUT_S, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        progress(f"installing redis-server failed ({exc}); Redis rows will be skipped.")
