"""Tests of hsid.upkeep."""
