"""Utilities: BIDS input queries and file-system helpers."""
