"""Tests of hsid.commands."""
