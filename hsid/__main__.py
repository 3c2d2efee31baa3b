"""`python -m hsid` is the `hsid` command."""

from hsid.cli import main

raise SystemExit(main())
