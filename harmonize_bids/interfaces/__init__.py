"""Nipype interfaces.  The work is done by plain module-level functions that
the interfaces call, so the logic is testable without nipype."""
