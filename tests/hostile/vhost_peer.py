"""A hostile vhost-user front-end, started by the boot session in place of the UML kernel.

``python vhost_peer.py SCENARIO [ARGS...] SOCKET``: connects to SOCKET and plays SCENARIO. It is
written from the vhost-user and virtio_pcidev specifications alone (no project imports), as a
peer would be. Results a test needs are printed as ``@@vmsix`` console lines; after its hostile
act a scenario waits for the session to hang up (or to be killed).
"""

from __future__ import annotations

import array
import mmap
import os
import select
import socket
import struct
import sys

HDR = struct.Struct("<III")
VERSION = 1
GET_FEATURES, SET_FEATURES, SET_MEM_TABLE = 1, 2, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL = 12, 13
CFG_READ, MMIO_READ = 1, 3
MSG = struct.Struct("<BBHIQ")  # virtio_pcidev_msg
DESC = struct.Struct("<QIHH")
F_NEXT, F_WRITE = 1, 2

QSIZE = 32
DESC_AT, AVAIL_AT, USED_AT, REQ_AT, REPLY_AT = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000
MARK = "@@vmsix"


def say(*words: object) -> None:
    print(MARK, *words, flush=True)


class Peer:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.mem: mmap.mmap | None = None
        self.memfd = -1
        self.avail_idx = 0
        self.used_seen = 0
        self.call_r = -1
        self.kick = -1

    # -- messages ----------------------------------------------------------------------------
    def send(self, req: int, payload: bytes = b"", fds: list[int] | None = None) -> None:
        data = HDR.pack(req, VERSION, len(payload)) + payload
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sent = self.sock.sendmsg([data], anc)
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            data = self.sock.recv(n - len(buf))
            if not data:
                raise EOFError
            buf += data
        return buf

    def reply(self) -> bytes:
        _req, _flags, size = HDR.unpack(self.recv_exact(HDR.size))
        return self.recv_exact(size)

    def sync(self) -> None:
        """Two round trips: the session has run a full service pass after anything we did
        before the first (it serves rings after each message it handles)."""
        for _ in range(2):
            self.send(GET_FEATURES)
            self.reply()

    def wait_hangup(self) -> None:
        try:
            while self.sock.recv(4096):
                pass
        except OSError:
            pass

    # -- memory and the cmd ring ---------------------------------------------------------------
    def share_memory(self, size: int) -> None:
        self.memfd = os.memfd_create("peer-mem")
        os.ftruncate(self.memfd, size)
        self.mem = mmap.mmap(self.memfd, size)
        region = struct.pack("<QQQQ", 0, size, 0, 0)
        self.send(SET_MEM_TABLE, struct.pack("<II", 1, 0) + region, [self.memfd])

    def setup_cmd_ring(self) -> None:
        self.send(SET_VRING_NUM, struct.pack("<II", 0, QSIZE))
        self.send(SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, DESC_AT, USED_AT, AVAIL_AT, 0))
        self.send(SET_VRING_BASE, struct.pack("<II", 0, 0))
        self.call_r, call_w = os.pipe()
        self.send(SET_VRING_CALL, struct.pack("<Q", 0), [call_w])
        os.close(call_w)
        self.start_ring()

    def restart_ring(self) -> None:
        """After GET_VRING_BASE: new call and kick descriptors, as a front-end starting a ring."""
        os.close(self.call_r)
        self.call_r, call_w = os.pipe()
        self.send(SET_VRING_CALL, struct.pack("<Q", 0), [call_w])
        os.close(call_w)
        self.start_ring()

    def start_ring(self) -> None:
        if self.kick >= 0:
            os.close(self.kick)
        self.kick = os.eventfd(0)
        self.send(SET_VRING_KICK, struct.pack("<Q", 0), [self.kick])

    def used_idx(self) -> int:
        assert self.mem is not None
        return struct.unpack_from("<H", self.mem, USED_AT + 2)[0]

    def post(self, chain: list[tuple[int, int, int]]) -> None:
        """Offer a chain of (addr, len, flags) starting at descriptor 0 and kick."""
        assert self.mem is not None
        for i, (addr, length, flags) in enumerate(chain):
            nxt = F_NEXT if i + 1 < len(chain) else 0
            DESC.pack_into(self.mem, DESC_AT + 16 * i, addr, length, flags | nxt, i + 1)
        struct.pack_into("<H", self.mem, AVAIL_AT + 4 + 2 * (self.avail_idx % QSIZE), 0)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.mem, AVAIL_AT + 2, self.avail_idx)
        os.eventfd_write(self.kick, 1)

    def request(self, op: int, bar: int, size: int, addr: int,
                chain: list[tuple[int, int, int]] | None = None) -> bytes:  # fmt: skip
        assert self.mem is not None
        MSG.pack_into(self.mem, REQ_AT, op, bar, 0, size, addr)
        self.mem[REPLY_AT : REPLY_AT + 8] = b"\0" * 8
        self.post(chain or [(REQ_AT, MSG.size, 0), (REPLY_AT, 8, F_WRITE)])
        return self.answer()

    def answer(self) -> bytes:
        """Wait for the next used element; its reply bytes."""
        assert self.mem is not None
        want = (self.used_seen + 1) & 0xFFFF
        while self.used_idx() != want:
            r, _, _ = select.select([self.call_r], [], [], 5)
            if not r:
                raise SystemExit("no answer from the device")
            os.read(self.call_r, 4096)
        self.used_seen = want
        slot = (want - 1) % QSIZE
        _head, length = struct.unpack_from("<II", self.mem, USED_AT + 4 + 8 * slot)
        return bytes(self.mem[REPLY_AT : REPLY_AT + length])


def main(argv: list[str]) -> None:
    scenario, args, path = argv[0], argv[1:-1], argv[-1]
    p = Peer(path)
    if scenario == "partial-header":
        p.sock.sendall(HDR.pack(GET_FEATURES, VERSION, 0)[:5])
    elif scenario == "partial-payload":
        p.sock.sendall(HDR.pack(SET_FEATURES, VERSION, 8) + b"\1\2\3")
    elif scenario == "no-read":
        while True:  # requests whose replies we never read
            p.send(GET_FEATURES)
    elif scenario == "chatter":
        while True:  # well-formed requests, answered, for ever: only the deadline ends it
            p.send(GET_FEATURES)
            p.reply()
    elif scenario == "orphan":
        if os.fork() == 0:  # a child left in the process group while the peer itself exits
            os.closerange(0, 1024)
            import time

            time.sleep(120)
            os._exit(0)
        p.sock.sendall(HDR.pack(GET_FEATURES, VERSION, 0)[:5])
        return
    elif scenario == "mem-size-overflow":
        fd = os.memfd_create("m")
        os.ftruncate(fd, 1 << 20)
        region = struct.pack("<QQQQ", 0, 1 << 63, 0, 0)
        p.send(SET_MEM_TABLE, struct.pack("<II", 1, 0) + region, [fd])
    elif scenario == "mem-offset-overflow":
        fd = os.memfd_create("m")
        os.ftruncate(fd, 1 << 20)
        region = struct.pack("<QQQQ", 0, 1 << 20, 0, (1 << 64) - 4096)
        p.send(SET_MEM_TABLE, struct.pack("<II", 1, 0) + region, [fd])
    elif scenario == "kick-pipe":
        r, _w = os.pipe()
        p.send(SET_VRING_KICK, struct.pack("<Q", 0), [r])
    elif scenario == "fd-flood":
        nulls = [os.open(os.devnull, os.O_RDONLY) for _ in range(8)]
        for _ in range(500):
            p.send(GET_FEATURES, b"", nulls)
            p.reply()
        r, _w = os.pipe()
        p.send(SET_VRING_KICK, struct.pack("<Q", 0), [r])  # rejected: a pipe
    elif scenario == "truncate-memory":
        p.share_memory(1 << 20)
        p.setup_cmd_ring()
        say("vendor", p.request(CFG_READ, 0, 2, 0).hex())
        os.ftruncate(p.memfd, 0)  # the session's next ring read is past the end of the file
        os.eventfd_write(p.kick, 1)
    elif scenario == "stop-ring":
        p.share_memory(1 << 20)
        p.setup_cmd_ring()
        say("vendor", p.request(CFG_READ, 0, 2, 0).hex())
        p.send(GET_VRING_BASE, struct.pack("<II", 0, 0))
        say("base", struct.unpack("<II", p.reply())[1])
        MSG.pack_into(p.mem, REQ_AT, CFG_READ, 0, 0, 2, 0)
        p.post([(REQ_AT, MSG.size, 0), (REPLY_AT, 8, F_WRITE)])
        p.sync()
        say("stopped-used", p.used_idx())
        p.restart_ring()
        say("restarted", p.answer().hex())  # the request offered while it was stopped
        say("done")
        return
    elif scenario == "pcidev":
        bar4_size = int(args[0])
        big = 16 << 20
        p.share_memory(0x10000 + 16 * big)  # sparse: nothing is touched but the ring pages
        p.setup_cmd_ring()
        say("vendor", p.request(CFG_READ, 0, 2, 0).hex())
        say("absent", p.request(MMIO_READ, 3, 4, 0).hex())
        say("pastend", p.request(MMIO_READ, 4, 4, bar4_size - 2).hex())
        say("bar4", p.request(MMIO_READ, 4, 4, 0).hex())
        # 16 readable buffers of 16 MiB, the header at the start of the first.
        chain = [(REQ_AT if i == 0 else 0x10000 + i * big, big - 0x10000, 0) for i in range(16)]
        say("big", p.request(CFG_READ, 0, 2, 0, chain + [(REPLY_AT, 8, F_WRITE)]).hex())
        say("done")
        return
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    p.wait_hangup()


if __name__ == "__main__":
    main(sys.argv[1:])
