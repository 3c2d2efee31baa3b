"""Tests of hsid.entities."""
