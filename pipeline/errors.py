"""Errors the user sees as one line; everything else is a bug and gets a traceback in the log."""

from __future__ import annotations


class DaptError(Exception):
    """A problem the user can fix: printed as one line, process exits with ``exit_code``."""

    exit_code = 1


class ConfigError(DaptError):
    """Invalid configuration: bad key, type, value, or missing input file. Nothing is written."""

    exit_code = 2


class InputError(DaptError):
    """Bad input data that cannot be rejected record-by-record (e.g. an unreadable file)."""

    exit_code = 2


class StageMissingError(DaptError):
    """An upstream stage's output is missing; the message names the stage to run first."""

    exit_code = 3


class PreflightError(DaptError):
    """The planner predicts the run cannot fit; the message carries the plan and alternatives."""

    exit_code = 4
