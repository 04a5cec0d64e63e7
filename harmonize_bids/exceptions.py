"""Errors that end a run with a BIDS-Apps exit code.

The codes follow the BIDS Apps execution specification and ``sysexits.h``:
16 validation failed, 18 the filters selected nothing, 64 usage error,
66 missing input, 73 cannot create output, 74 I/O error.
"""
from __future__ import annotations


class HarmonizeError(Exception):
    """Base class: a message for the user and the process exit code."""

    exit_code = 1


class UsageError(HarmonizeError):
    """The command line or a settings file asks for something impossible."""

    exit_code = 64


class InputError(HarmonizeError):
    """An input the user named is missing or unreadable."""

    exit_code = 66


class ValidationError(HarmonizeError):
    """The input dataset is not valid BIDS."""

    exit_code = 16


class NothingSelectedError(HarmonizeError):
    """The participant/session labels and filters selected no data."""

    exit_code = 18


class OutputError(HarmonizeError):
    """The output directory cannot be created or written."""

    exit_code = 73


class StorageError(HarmonizeError):
    """No space left (or quota exceeded) where outputs or the work dir are written."""

    exit_code = 74
