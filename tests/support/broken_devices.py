"""Sensor nodes broken on purpose: the firmware's CPython twin with one behaviour patched out.

The conformance suite must fail each of these with a message naming the check. Run as a
script (python broken_devices.py KIND --config FILE) it patches the firmware's node module
and then runs the firmware's own main(); BrokenNode starts one on a pty like NodeProcess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KINDS = (
    "never_resends",
    "resends_with_new_seq",
    "ignores_boot_id",
    "oversize_frames",
    "wrong_request_id",
    "no_hello_after_reboot",
)


def patch(kind: str) -> None:
    """Break the firmware (already on sys.path) in the way `kind` names."""
    import node

    from gateway.core import device_protocol as protocol  # what the node runs

    if kind == "never_resends":
        node.Node._go_back = lambda self: None
    elif kind == "resends_with_new_seq":
        original = node.Node._send

        async def renumbered(self, kind, payload=b"", seq=0, flags=0):
            if kind == protocol.DATA and flags & protocol.FLAG_RETRANSMIT:
                seq = protocol.seq_add(seq, 1000)
            return await original(self, kind, payload, seq, flags)

        node.Node._send = renumbered
    elif kind == "ignores_boot_id":
        node.random_boot_id = lambda: 0x0B0071D0  # the same "random" id at every boot
    elif kind == "oversize_frames":
        protocol.MAX_PAYLOAD = 2000  # the encoder no longer refuses what the spec forbids
        original_log = node.Node.log

        def padded(self, level, text):
            original_log(self, level, text.ljust(700, "."))

        node.Node.log = padded
    elif kind == "wrong_request_id":
        original_respond = node.Node._respond

        async def off_by_one(self, request_id, status, result):
            await original_respond(self, protocol.seq_add(request_id, 1), status, result)

        node.Node._respond = off_by_one
    elif kind == "no_hello_after_reboot":
        original_init, original_hello = node.Node.__init__, node.Node.send_hello
        boots = []

        def counting(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            boots.append(self.boot)

        async def first_boot_only(self):
            if len(boots) == 1:
                await original_hello(self)

        node.Node.__init__ = counting
        node.Node.send_hello = first_boot_only
    else:
        raise ValueError(f"unknown broken device {kind!r}; expected one of {', '.join(KINDS)}")


class BrokenNode:
    """A broken node process on the master end of `device` (gateway side: device.path)."""

    def __init__(self, kind: str, config_path: str, device, log_path: str):
        from host_tools.resources import firmware_dir, import_root

        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(firmware_dir()), str(import_root())]),
        }
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, kind, "--config", config_path],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(device.master,),
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(10)


if __name__ == "__main__":
    # This folder holds a config.py of its own: the firmware's (on PYTHONPATH) must win.
    sys.path.remove(str(Path(__file__).resolve().parent))
    patch(sys.argv[1])
    import main

    main.main(sys.argv[2:])
