"""`python -m studio ...`: see studio.cli.main."""

from studio.cli.main import main

raise SystemExit(main())
