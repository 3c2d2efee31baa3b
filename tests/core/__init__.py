"""Tests of hsid.core."""
