"""``python -m mrsr.report <sweep folder> ...``: :func:`mrsr.report.tables.main`."""

from mrsr.report.tables import main

raise SystemExit(main())
