"""Real QEMU as a device under test: ``qemu-system-x86_64 -qtest`` runs no guest code and lets
a test drive the machine's buses directly (config cycles through ports 0xCF8/0xCFC, MMIO)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from pathlib import Path

from .debian import require

SLOT = 3
MODERN_BAR_ADDR = 0xE000_0000  # inside q35's 32-bit PCI hole
MSIX_BAR_ADDR = 0xE010_0000
IO_BAR_ADDR = 0xC000


class QtestError(RuntimeError):
    pass


class Qtest:
    """A QEMU process under the qtest accelerator and its command channel."""

    def __init__(
        self,
        device_args: str = "",
        machine: str = "q35",
        extra: list[str] | None = None,
        reply_timeout: float = 20.0,
        netdev: str = "user",
        prefix: list[str] | None = None,
    ) -> None:
        """``device_args``: virtio-net-pci properties after ``addr``; ``netdev``: the peer's
        ``-netdev`` type and options (its id is n0).

        QEMU's own stderr (a warning it starts with, or the line it refuses with) is
        ``self.stderr()``; a refusal is a QtestError carrying it."""
        qemu = require("qemu-system-x86_64", "qemu-system-x86")
        self.dir = tempfile.TemporaryDirectory(prefix="vmsix-qtest-")
        path = str(Path(self.dir.name) / "qtest.sock")
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen(1)
        srv.settimeout(30)
        device = f"virtio-net-pci,addr={SLOT:#x}" + (f",{device_args}" if device_args else "")
        # -S: no guest code runs (the BIOS would race our 0xCF8/0xCFC config cycles); Debian's
        # build has no "-accel qtest", so the default TCG is kept stopped.
        cmd = [*(prefix or []), qemu, "-M", machine, "-S", "-display", "none", "-nodefaults", "-qtest", f"unix:{path}", "-qtest-log", "/dev/null",
               "-netdev", f"{netdev},id=n0", "-device", device + ",netdev=n0", *(extra or [])]  # fmt: skip
        self._stderr_path = Path(self.dir.name) / "stderr"
        with open(self._stderr_path, "wb") as err_file:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=err_file)
        # Wait for the connection in short slices, so that a QEMU refusing its command line
        # is reported at once with its message rather than after the whole timeout.
        srv.settimeout(0.2)
        try:
            for _ in range(150):
                try:
                    self.sock, _ = srv.accept()
                    break
                except TimeoutError:
                    if self.proc.poll() is not None:
                        break
            else:
                self.proc.kill()
            if not hasattr(self, "sock"):
                self.proc.wait()
                err = self.stderr().strip()
                self.dir.cleanup()
                raise QtestError(
                    err.splitlines()[0] if err else "qemu did not connect to its qtest socket"
                )
        finally:
            srv.close()
        # A QEMU that stops answering is a failure with a message, never a hang.
        self.sock.settimeout(reply_timeout)
        self.file = self.sock.makefile("rw", buffering=1)
        # QEMU opens the qtest channel before it creates the devices: one round trip tells a
        # machine that is up from one that refused its -device and exited.
        try:
            self.cmd("inb 0x80")
        except (QtestError, OSError):
            self.proc.wait(timeout=10)
            err = self.stderr().strip()
            self.sock.close()
            self.dir.cleanup()
            raise QtestError(err.splitlines()[0] if err else "qemu exited at start") from None

    def stderr(self) -> str:
        """What QEMU wrote to stderr so far (warnings; the reason it refused to start)."""
        try:
            return self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def cmd(self, line: str) -> str:
        self.file.write(line + "\n")
        self.file.flush()
        while True:
            try:
                reply = self.file.readline()
            except TimeoutError:
                raise QtestError(f"qemu did not answer {line!r} within the timeout") from None
            if not reply:
                raise QtestError(f"qemu closed the qtest channel after {line!r}")
            reply = reply.strip()
            if reply.startswith("IRQ"):
                continue  # asynchronous interrupt notice
            if reply.startswith("OK"):
                return reply[2:].strip()
            raise QtestError(f"{line!r}: {reply}")

    # -- port I/O and memory ------------------------------------------------------------------------
    def out(self, port: int, size: int, value: int) -> None:
        self.cmd(f"{ {1: 'outb', 2: 'outw', 4: 'outl'}[size] } {port:#x} {value:#x}")

    def inp(self, port: int, size: int) -> int:
        return int(self.cmd(f"{ {1: 'inb', 2: 'inw', 4: 'inl'}[size] } {port:#x}"), 16)

    def read(self, addr: int, size: int) -> int:
        return int(
            self.cmd(f"{ {1: 'readb', 2: 'readw', 4: 'readl', 8: 'readq'}[size] } {addr:#x}"), 16
        )

    def write(self, addr: int, size: int, value: int) -> None:
        self.cmd(
            f"{ {1: 'writeb', 2: 'writew', 4: 'writel', 8: 'writeq'}[size] } {addr:#x} {value:#x}"
        )

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self.proc.kill()
            self.proc.wait()
            self.dir.cleanup()

    def __enter__(self) -> Qtest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class QemuDevice:
    """QEMU's virtio-net-pci with the same face as our device model: ``cfg_read/cfg_write`` by
    config offset and ``bar_read/bar_write`` by BAR and offset, so one access sequence can be
    applied to both."""

    def __init__(self, qt: Qtest, slot: int = SLOT, bar_base: dict[int, int] | None = None) -> None:
        self.qt = qt
        self.slot = slot
        self.bar_base = bar_base or {0: IO_BAR_ADDR, 1: MSIX_BAR_ADDR, 4: MODERN_BAR_ADDR}

    def _cf8(self, offset: int) -> int:
        return 0x80000000 | self.slot << 11 | (offset & 0xFC)

    def cfg_read(self, offset: int, size: int) -> int:
        self.qt.out(0xCF8, 4, self._cf8(offset))
        return self.qt.inp(0xCFC + (offset & 3), size)

    def cfg_write(self, offset: int, size: int, value: int) -> None:
        self.qt.out(0xCF8, 4, self._cf8(offset))
        self.qt.out(0xCFC + (offset & 3), size, value)

    def map_bars(self) -> None:
        """Program the BARs where bar_read/bar_write expect them and turn decode on."""
        self.cfg_write(0x10, 4, self.bar_base[0])
        self.cfg_write(0x14, 4, self.bar_base[1])
        self.cfg_write(0x20, 4, self.bar_base[4])
        self.cfg_write(0x24, 4, 0)
        self.cfg_write(0x04, 2, 0x7)

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        if bar in (0, 2) and bar in self.bar_base and self.bar_base[bar] < 0x10000:
            return self.qt.inp(self.bar_base[bar] + offset, size)
        return self.qt.read(self.bar_base[bar] + offset, size)

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if bar in (0, 2) and bar in self.bar_base and self.bar_base[bar] < 0x10000:
            self.qt.out(self.bar_base[bar] + offset, size, value)
        else:
            self.qt.write(self.bar_base[bar] + offset, size, value)


def qemu_available() -> str | None:
    """None when the real QEMU can run here, else the reason it cannot."""
    try:
        require("qemu-system-x86_64", "qemu-system-x86")
    except RuntimeError as e:
        return str(e)
    if not os.access("/dev/null", os.W_OK):
        return "no /dev/null"
    return None
