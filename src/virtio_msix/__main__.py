"""``python -m virtio_msix``: the same as the ``virtio-msix`` command."""

import sys

from .cli import main

sys.exit(main())
