"""Alerts: rules, delivery and the channels an alert leaves by."""
