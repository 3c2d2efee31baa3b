"""Tests of hsid.daemon."""
