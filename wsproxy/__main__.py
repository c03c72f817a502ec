"""``python -m wsproxy``: the same commands as the ``wsproxy`` script."""

from wsproxy.cli import main

raise SystemExit(main())
