"""Diagnostics that no stage reads: run as `python -m analysis.<name>`."""
