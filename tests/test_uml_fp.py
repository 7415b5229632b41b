"""The real kernel on every x86-64 host: UML's FP save area against the host's XSAVE area.

Linux 6.1's UML hard-codes a 2696-byte FP area; on a host whose XSAVE area is larger (AMX) every
user process dies. ``uml/patches/uml-host-xstate-size.patch`` makes the area a config value that
``uml/kernel.py`` sets from the host, with a kernel stack to match. These tests hold the relation
that matters on any host (the built kernel's area against the host's size as ptrace and CPUID
leaf 0xD report it), check FP state really survives context switches inside the guest
(``tests/guest/fpcheck.c``), and that a kernel whose FP save is wrong fails that check.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from virtio_msix.uml import kernel as uml_kernel
from virtio_msix.uml.boot import BootOptions, run_boot

HERE = Path(__file__).parent
FPCHECK_SRC = HERE / "guest" / "fpcheck.c"

XSTATE_PROBE_C = r"""
#include <cpuid.h>
#include <stdio.h>
#include <signal.h>
#include <unistd.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <linux/elf.h>
int main(void)
{
    unsigned a, b, c, d;
    static char buf[65536];
    struct iovec iov = { buf, sizeof buf };
    int st;
    __cpuid_count(0xd, 0, a, b, c, d);
    pid_t p = fork();
    if (!p) { ptrace(PTRACE_TRACEME, 0, 0, 0); raise(SIGSTOP); _exit(0); }
    waitpid(p, &st, 0);
    long r = ptrace(PTRACE_GETREGSET, p, NT_X86_XSTATE, &iov);
    kill(p, SIGKILL);
    printf("%u %u %ld %zu\n", b, c, r, iov.iov_len);
    return 0;
}
"""


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc not found: install build-essential (scripts/setup --system)", pytrace=False)
    return gcc


@pytest.fixture(scope="module")
def xstate(tmp_path_factory) -> dict[str, int]:
    """The host's XSAVE sizes, from a C program independent of the package's own probe: CPUID
    leaf 0xD sub-leaf 0 (EBX: the size XCR0's features need; ECX: the most any could) and the
    length PTRACE_GETREGSET NT_X86_XSTATE reports."""
    d = tmp_path_factory.mktemp("xstate")
    (d / "probe.c").write_text(XSTATE_PROBE_C)
    subprocess.run([_gcc(), "-O2", "-o", str(d / "probe"), str(d / "probe.c")], check=True)
    ebx, ecx, rc, length = map(int, subprocess.run([str(d / "probe")], capture_output=True,
                                                   text=True, check=True).stdout.split())  # fmt: skip
    assert rc == 0, "PTRACE_GETREGSET NT_X86_XSTATE failed on this host"
    return {"cpuid_ebx": ebx, "cpuid_ecx": ecx, "regset": length}


@pytest.fixture(scope="module")
def fpcheck(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fpcheck") / "fpcheck"
    subprocess.run([_gcc(), "-O2", "-Wall", "-static", "-pthread", "-o", str(out),
                    str(FPCHECK_SRC)], check=True, capture_output=True)  # fmt: skip
    return out


# -- the sizing rule, for hosts this machine is not ---------------------------------------------


@pytest.mark.parametrize(
    ("host", "area", "order"),
    [
        (None, 2696, 2),  # no XSAVE regset: the legacy FXSAVE calls, 6.1's area
        (832, 2696, 2),  # AVX only
        (2440, 2696, 2),  # AVX2 + PKRU (AMD Zen)
        (2696, 2696, 2),  # AVX-512 + PKRU: exactly 6.1's number
        (11008, 11008, 4),  # AMX (Sapphire Rapids and later): the panic the patch fixes
    ],
)
def test_fp_plan_for_known_hosts(host, area, order):
    plan = uml_kernel.fp_plan(host)
    assert (plan.area_bytes, plan.stack_order) == (area, order)


def test_fp_plan_relation_holds_for_every_size():
    """For any XSAVE size the architecture could report: the area holds it whole (SETREGSET
    accepts only the full size), and the stack keeps 6.1's margin beside four areas."""
    margin = (4096 << 2) - 4 * 2696
    for host in range(512, 32769, 8):
        plan = uml_kernel.fp_plan(host)
        assert plan.area_bytes >= host and (plan.area_bytes % 64 == 0 or plan.area_bytes == 2696)
        assert (4096 << plan.stack_order) - 4 * plan.area_bytes >= margin, host
        assert plan.stack_order == 2 or (4096 << (plan.stack_order - 1)) - 4 * plan.area_bytes < margin


# -- this host --------------------------------------------------------------------------------


def test_package_probe_agrees_with_ptrace_and_cpuid(xstate):
    size = uml_kernel.host_xstate_bytes()
    assert size == xstate["regset"]
    # The ptrace image covers the XCR0 features, which is what CPUID(0xD, 0).EBX sizes.
    assert xstate["regset"] <= xstate["cpuid_ebx"] <= xstate["cpuid_ecx"]


def _check_fp_area(tree: Path, xstate: dict[str, int]) -> None:
    header = (tree / "include" / "generated" / "user_constants.h").read_text()
    m = re.search(r"#define HOST_FP_SIZE (\d+)", header)
    assert m, "HOST_FP_SIZE not in user_constants.h"
    area = int(m.group(1)) * 8
    assert area >= max(xstate["regset"], xstate["cpuid_ebx"])
    config = (tree / ".config").read_text()
    order = int(re.search(r"^CONFIG_KERNEL_STACK_ORDER=(\d+)$", config, re.M).group(1))
    assert f"CONFIG_UML_HOST_XSTATE_SIZE={area}" in config
    assert (4096 << order) - 4 * area >= (4096 << 2) - 4 * 2696


def test_built_kernel_fp_area_holds_this_hosts_xsave_area(linux, xstate):
    """The relation whose failure panics the kernel on AMX hosts, read from the build that runs:
    HOST_FP_SIZE (longs) in the generated header and the stack order in .config."""
    _check_fp_area(uml_kernel.tree_dir(), xstate)
    assert uml_kernel.is_built(), "the cache stamp does not match this host's plan"


# -- Linux 6.12: the same port (patches/6.12/uml-host-xstate-size.patch), the same checks ------


def test_612_built_kernel_fp_area_holds_this_hosts_xsave_area(linux612, xstate):
    _check_fp_area(uml_kernel.tree_dir("6.12"), xstate)
    assert uml_kernel.is_built("6.12"), "the cache stamp does not match this host's plan"


@pytest.mark.uml
def test_612_fp_state_survives_context_switches_in_the_guest(linux612, fpcheck):
    res = _fpcheck_boot(fpcheck, kernel="6.12")
    assert res.error is None, res.error + "\n" + res.console[-3000:]
    assert "Linux version 6.12." in res.console
    assert "FPCHECK PASS" in res.console, res.console[-3000:]
    assert "Kernel panic" not in res.console


@pytest.mark.uml
def test_612_kernel_says_so_on_a_host_with_a_larger_xsave_area(linux612, fpcheck):
    init = "break main\ncommands\nsilent\nset var uml_fp_area_bytes = 576\ncontinue\nend"
    res = _fpcheck_boot(fpcheck, gdb_init=init, kernel="6.12")
    assert res.error is not None
    assert re.search(r"host's XSAVE area is \d+ bytes, this kernel's FP save area 576",
                     res.console), res.console[-3000:]  # fmt: skip
    assert "FPCHECK" not in res.console


# -- FP state in the guest --------------------------------------------------------------------


def _fpcheck_boot(fpcheck: Path, gdb_init: str = "", rounds: int = 150, kernel: str = "6.1"):
    return run_boot(BootOptions(script=f"/fpcheck 2 2 {rounds}\n", files={"/fpcheck": fpcheck},
                                gdb_init=gdb_init, timeout=120, kernel=kernel))  # fmt: skip


@pytest.mark.uml
def test_fp_state_survives_context_switches_in_the_guest(linux, fpcheck):
    """Two processes of two threads each keep their SSE/AVX(/AVX-512) registers across many
    yields and sleeps under the real kernel."""
    res = _fpcheck_boot(fpcheck)
    assert res.error is None, res.error + "\n" + res.console[-3000:]
    assert "FPCHECK PASS" in res.console, res.console[-3000:]
    assert "Kernel panic" not in res.console


@pytest.mark.uml
def test_fpcheck_fails_when_the_kernel_saves_fp_state_wrong(linux, fpcheck):
    """The check can fail: the same kernel, told by gdb that the host has no XSAVE regset, saves
    and restores only the legacy FXSAVE area (x87/SSE) of each thread, so the upper YMM/ZMM
    halves (and AVX-512's mask registers) are not the thread's own.

    Only while fpcheck runs: the guest's shell runs its `umask` builtin (umask(2)) with 0123
    just before it and 022 just after, and gdb sets the flag off and on at those masks. Set from boot on, as this test first did,
    it kills init on a host with AVX-512 (an AMD EPYC, every boot): each static binary started
    in that mode faults in its glibc start-up at the same address, busybox's init first, and the
    kernel panics before fpcheck runs. So no process but fpcheck may start while the flag is off
    (a `sync` command to flip it back faulted the same way: hence a builtin). The shell only
    waits in wait4() meanwhile: vector registers are caller-saved in the x86-64 ABI, so none of
    its values live across that call."""
    if "avx" not in Path("/proc/cpuinfo").read_text().split():
        pytest.skip("this host's CPU has no AVX: the legacy FXSAVE save loses nothing "
                    "fpcheck can see")  # fmt: skip
    # Set by the mask asked for, not toggled per call: busybox's umask makes three calls (read
    # with 0, restore the old mask, set the new one), so only the new masks decide. $rdi: the
    # syscall's argument as sys_umask is entered.
    init = ("break sys_umask if $rdi == 0123\ncommands\nsilent\n"
            "set var have_xstate_support = 0\ncontinue\nend\n"
            "break sys_umask if $rdi == 022\ncommands\nsilent\n"
            "set var have_xstate_support = 1\ncontinue\nend")  # fmt: skip
    script = "umask 0123\n/fpcheck 2 2 60\numask 022\necho fp-saving restored\n"
    res = run_boot(BootOptions(script=script, files={"/fpcheck": fpcheck}, gdb_init=init,
                               timeout=120))  # fmt: skip
    assert "FPCHECK PASS" not in res.console, res.console[-3000:]
    # Either fpcheck sees another thread's registers, or the process dies before it can look
    # (seen: glibc's TLS set-up, copied with AVX moves, comes out wrong and atoi() faults).
    failed = "FPCHECK FAIL" in res.console or re.search(r"fpcheck\[\d+\]: segfault", res.console)
    assert failed, res.console[-3000:]
    # The kernel itself lived on: the guest script went on after fpcheck and finished.
    assert "fp-saving restored" in res.console, res.console[-3000:]
    assert "done" in res.times and "Kernel panic" not in res.console


@pytest.mark.uml
def test_kernel_says_so_on_a_host_with_a_larger_xsave_area(linux, fpcheck):
    """What an AMX host meets with a kernel built elsewhere: gdb lowers the built area below this
    host's XSAVE size before the kernel probes it; the kernel stops at once with a line naming
    both sizes (instead of every user process dying), and the boot reports the failure."""
    init = "break main\ncommands\nsilent\nset var uml_fp_area_bytes = 576\ncontinue\nend"
    res = _fpcheck_boot(fpcheck, gdb_init=init)
    assert res.error is not None
    assert re.search(r"host's XSAVE area is \d+ bytes, this kernel's FP save area 576",
                     res.console), res.console[-3000:]  # fmt: skip
    assert "FPCHECK" not in res.console


@pytest.mark.uml
def test_boots_in_a_row_with_traffic(linux):
    """Several boots with traffic, no kernel panic (bench/boot_loop.py runs 50)."""
    for i in range(4):
        res = run_boot(BootOptions(timeout=90))
        assert res.error is None, f"boot {i}: {res.error}\n{res.console[-2000:]}"
        assert "Kernel panic" not in res.console
        assert res.ping()["received"] == 3, f"boot {i}: {res.sections.get('ping')}"
