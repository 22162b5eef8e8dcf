"""``python -m trustregion.report``: the entry point (``cli``)."""

from trustregion.report.cli import main

main()
