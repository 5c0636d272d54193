"""A real, small (or read-only) tmpfs for a data directory: the kernel's own ENOSPC and EROFS."""

from __future__ import annotations

import contextlib
import os
import subprocess
from typing import Iterator

import pytest


@contextlib.contextmanager
def tmpfs(path, size: str, readonly: bool = False) -> Iterator:
    """Mount a tmpfs of `size` ("3m") on `path` for the block; unmounted after it (lazily,
    so a process still holding a file there cannot keep it mounted)."""
    os.makedirs(path, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(f"these tests mount a tmpfs and need root: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path, options: str) -> None:
    """Change a mounted tmpfs: "size=64m" (room again), "rw" (writable again)."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def fill(path) -> int:
    """Fill the file system holding `path` until it refuses a byte; the bytes written."""
    written, chunk = 0, 65536
    with open(os.path.join(path, "filler"), "wb", buffering=0) as file:
        while chunk:
            try:
                written += file.write(b"\0" * chunk)
            except OSError:  # ENOSPC: try smaller writes down to one byte
                chunk //= 2
    return written
