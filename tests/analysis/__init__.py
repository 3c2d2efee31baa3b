"""Tests of hsid.analysis."""
