"""`virtio-msix completion bash`: the script real bash sources completes what the parser has."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from virtio_msix.cli import build_parser

BASH = shutil.which("bash")


def complete(words: list[str]) -> list[str]:
    """COMPREPLY from real bash for the command line ``words`` (the last one being typed)."""
    if BASH is None:
        pytest.skip("bash not found")
    script = subprocess.run(
        [sys.executable, "-m", "virtio_msix", "completion", "bash"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    probe = f'{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _virtio_msix\n' \
            'printf "%s\\n" "${COMPREPLY[@]}"\n'  # fmt: skip
    out = subprocess.run([BASH, "--norc", "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def subcommands() -> list[str]:
    for action in build_parser()._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            return list(action.choices)
    raise AssertionError("no subcommands")


def test_every_subcommand_completes() -> None:
    got = complete(["virtio-msix", ""])
    assert set(subcommands()) <= set(got)
    assert complete(["virtio-msix", "cap"]) == ["capture-qemu"]


def test_options_are_the_subcommands_own() -> None:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(getattr(action, "choices", None), dict):
            for name, sub in action.choices.items():
                want = {o for a in sub._actions for o in a.option_strings}
                assert set(complete(["virtio-msix", name, "-"])) == want, name


def test_choices_complete_after_their_option() -> None:
    assert complete(["virtio-msix", "boot", "--kernel", ""]) == ["6.1", "6.12"]
    assert complete(["virtio-msix", "sim", "--color", "a"]) == ["auto", "always"]


def test_no_command_means_sim_options() -> None:
    assert "--cpus" in complete(["virtio-msix", "--c"])


def test_positional_choices_complete():
    assert complete(["virtio-msix", "completion", ""]) == ["bash"]
