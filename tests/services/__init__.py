"""Tests of hsid.services."""
