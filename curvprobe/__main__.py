"""``python -m curvprobe``: the ``curvprobe`` command (see :mod:`curvprobe.app.cli`)."""

from curvprobe.app.cli import main

raise SystemExit(main())
