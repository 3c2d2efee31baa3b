"""Tests of hsid.cameras."""
