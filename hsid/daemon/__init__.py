"""The daemon: which stages run, how they are built and supervised."""
