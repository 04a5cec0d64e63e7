"""Nipype workflows, built by keyword-only ``init_*_wf`` functions."""
