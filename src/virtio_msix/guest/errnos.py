"""The Linux errno values the driver model returns (include/uapi/asm-generic/errno-base.h and
errno.h), and their names, which is how a user should see them: ``-ENOSPC``, not ``-28``."""

from __future__ import annotations

ENOENT = 2
EIO = 5
ENOMEM = 12
EBUSY = 16
ENODEV = 19
EINVAL = 22
ENOSPC = 28
ERANGE = 34

NAMES = {
    value: name
    for name, value in globals().items()
    if name.startswith("E") and isinstance(value, int)
}


def errname(rc: int) -> str:
    """``-28`` → ``-ENOSPC``; a value without a name stays a number."""
    name = NAMES.get(-rc) if rc < 0 else None
    return f"-{name}" if name else str(rc)
