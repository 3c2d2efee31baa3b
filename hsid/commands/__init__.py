"""The `hsid` command line: one module per command."""
