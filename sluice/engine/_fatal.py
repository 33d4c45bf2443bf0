"""The error a child raises when no restart can help."""

from __future__ import annotations

__all__ = ["FatalError"]


class FatalError(Exception):
    """Fatal for the whole tree: the supervisor does not restart the child, it escalates.

    For errors only the operator can fix (a port in use, a bind refused, bad settings):
    the message names the cause and the setting to change, in one line, because the
    command line prints it as is.
    """
