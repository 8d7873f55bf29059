"""medai's own error base class.

Every error that means "the user's input or options are unusable" derives from
:class:`MedaiError`, so the command line can print such errors as one line and exit 2 while
a genuine bug (any other exception) keeps its traceback.
"""

from __future__ import annotations

__all__ = ["MedaiError"]


class MedaiError(Exception):
    """A problem with medai's inputs or options; the message names it."""
