"""Measurements of real models (capsim measure, probes): the ground truth predictions are validated against."""
