"""Cameras: folders and their layout, the registry, zones and the tamper watch."""
