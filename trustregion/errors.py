"""User-facing errors: each prints as one line naming the field (or file and row) and the fix."""

from __future__ import annotations


class TrustRegionError(Exception):
    """An error in the user's input, reported as one line without a traceback."""


class ConfigError(TrustRegionError):
    """A config value out of range or inconsistent with another."""


class DataError(TrustRegionError):
    """A missing or unreadable data file, or a malformed row."""


class TrainingError(TrustRegionError):
    """Training cannot go on (a non-finite loss, say); what was written so far is kept."""


class StopRequested(Exception):
    """A stop signal arrived while work that checks between batches (an evaluation) was running: its partial
    results are dropped and the run checkpoints what is done. Control flow, not an error of the user's."""
