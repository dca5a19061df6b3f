"""Validation: measured runs and published results beside predictions, and engine-profile fitting."""
