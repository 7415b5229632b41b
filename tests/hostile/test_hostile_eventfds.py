"""Issue 8, review round: the call and kick descriptors share their open file description with
the front-end, which can make them blocking again (fcntl on its copy). Our write to a full call
pipe and our read of an empty kick eventfd must still never block."""

from __future__ import annotations

import array
import fcntl
import os
import signal
import socket
import struct
from collections.abc import Iterator

import pytest

from virtio_msix.uml import vhost_user
from virtio_msix.uml.vhost_user import HEADER, VhostUserBackend, VhostUserError


class Hung(BaseException):
    pass


@pytest.fixture
def watchdog() -> Iterator[None]:
    """Turns a hang (the defect) into a test failure rather than a stuck suite."""

    def fire(*_: object) -> None:
        raise Hung("blocked")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def backend() -> Iterator[tuple[VhostUserBackend, socket.socket]]:
    a, b = socket.socketpair()
    vu = VhostUserBackend(b, features=1 << 32, num_queues=2)
    yield vu, a
    vu.close()
    a.close()


def send(vu: VhostUserBackend, a: socket.socket, req: int, payload: bytes, fds=()) -> None:
    data = HEADER.pack(req, 1, len(payload)) + payload
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    a.sendmsg([data], anc)
    vu.handle_one()


def make_blocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


def test_a_full_call_pipe_made_blocking_by_the_peer_does_not_block_signal(backend, watchdog):
    vu, a = backend
    r, w = os.pipe()
    send(vu, a, 13, struct.pack("<Q", 0), [w])  # SET_VRING_CALL 0: a pipe
    vu.vrings[0].started = True
    os.set_blocking(w, False)
    with pytest.raises(BlockingIOError):
        while True:
            os.write(w, b"x" * 4096)  # the peer fills it and never reads
    make_blocking(w)  # the peer's copy shares the open file description
    vu.signal(0)
    assert vu.stats.calls_coalesced == 1
    assert vu.stats.fd_blocking_reset == 1
    assert not os.get_blocking(w)
    os.close(r)
    os.close(w)


def test_an_empty_kick_eventfd_made_blocking_by_the_peer_does_not_block_drain(backend, watchdog):
    vu, a = backend
    kick = os.eventfd(0)
    send(vu, a, 12, struct.pack("<Q", 0), [kick])  # SET_VRING_KICK 0
    make_blocking(kick)
    assert vu.drain_kick(0) == 0
    assert vu.stats.fd_blocking_reset == 1
    os.eventfd_write(kick, 3)
    assert vu.drain_kick(0) == 3
    os.close(kick)


def test_the_last_guard_ends_a_read_that_blocks_anyway(backend, watchdog, monkeypatch):
    """If the peer races the readiness check, the timer ends the blocked call with an error."""
    vu, _ = backend
    monkeypatch.setattr(vhost_user, "FD_SYSCALL_LIMIT", 0.05)
    r, w = os.pipe()  # blocking and empty: a read would wait for ever
    with pytest.raises(VhostUserError, match="blocked"), vu._bounded_syscall("test fd", True):
        os.read(r, 8)
    os.close(r)
    os.close(w)


def test_an_unread_kick_eventfd_wakes_an_edge_triggered_epoll_on_every_write():
    """What the boot loop relies on (BootSession._loop): kick eventfds are watched with
    EPOLLET and never read, so every write by the peer must be one event even though the count
    is never drained, and nothing between writes. A host kernel that woke only on the count
    going from zero would lose every kick after the first; this checks the one we run on."""
    import select

    efd = os.eventfd(0, os.EFD_NONBLOCK)
    ep = select.epoll()
    try:
        ep.register(efd, select.EPOLLIN | select.EPOLLET)
        assert ep.poll(0) == []
        for n in range(1, 5):
            os.eventfd_write(efd, 1)  # the peer's kick
            assert ep.poll(0) == [(efd, select.EPOLLIN)], n
            assert ep.poll(0) == []  # reported once, not again until the next write
        # A peer that made the shared descriptor blocking changes nothing: we never read it.
        make_blocking(efd)
        os.eventfd_write(efd, 1)
        assert ep.poll(0) == [(efd, select.EPOLLIN)]
        assert os.eventfd_read(efd) == 5  # the count grew, unread
    finally:
        ep.close()
        os.close(efd)


def test_kicked_counts_kicks_on_stopped_rings_without_reading(backend):
    vu, _a = backend
    vu.kicked(0)  # no ring started yet
    vu.kicked(99)  # out of range: ignored, not an IndexError
    assert vu.stats.kicks_on_stopped_rings == 1
