"""``python -m curvprobe``: the ``curvprobe`` command (see :mod:`curvprobe.cli`)."""

from curvprobe.cli import main

raise SystemExit(main())
