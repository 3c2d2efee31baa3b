"""Tests of hsid.alerts."""
