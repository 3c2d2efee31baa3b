"""`python -m hsid` is the `hsid` command."""

from hsid.commands.main import main

raise SystemExit(main())
