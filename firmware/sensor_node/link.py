"""Byte transports to the gateway: make_link picks one (link_board: USB CDC stdio or a UART
on a board; link_host: a pty or a tty on a host), and only its module is loaded.

Every link has: async open(), async read() -> bytes (never empty), async write(data),
close(), and `reopens` (True when read() raising LinkClosed is worth an open() retry).
"""

# Bytes asked for per read (a frame may span reads). Small: every frame of a read is decoded
# at once, and 512 bytes of ACKs are 40 frames whose lists a full ring's heap cannot spare.
CHUNK = 128


class LinkClosed(Exception):
    """The other end went away (pty closed, cable pulled)."""


def make_link(spec):
    """The link for a validated config "link" object (not opened yet)."""
    kind = spec["type"]
    # Each side's links in a module of their own, imported only for the link types that use
    # them: a board's heap never holds the host links, nor a host's the board links.
    if kind == "stdio":
        from link_board import StdioLink

        return StdioLink()
    if kind == "uart":
        from link_board import UartLink

        return UartLink(spec)
    if kind == "fd":
        from link_host import FdLink

        return FdLink(spec["fd"])
    if kind == "path":
        from link_host import FdLink

        return FdLink(None, spec["path"])
    raise ValueError(f"unknown link type {kind!r}")
