"""Job configs: built the same way from parsed flags, checked the same way, all problems at once.

Every job's options are a frozen dataclass (``TrainConfig``, ``ScoreConfig``, ``ReportConfig``,
``NightlyConfig``, ``DemoConfig``, ``ExportConfig``, ``PredictConfig``, ``SubmitConfig``).
:func:`config_from` builds one from parsed flags (``--config`` YAML already merged by the CLI),
field by field by name; :class:`CheckedConfig` gives each a :meth:`~CheckedConfig.check` that
raises the job's error naming every unusable option at once (``"; "``-joined).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from medai.errors import MedaiError

__all__ = ["CheckedConfig", "config_from"]

C = TypeVar("C")


class CheckedConfig:
    """A config that lists its problems; :meth:`check` raises them all in one error.

    Subclasses set :attr:`error` (their job's :class:`~medai.errors.MedaiError`) and
    implement :meth:`problems`.
    """

    error: ClassVar[type[MedaiError]] = MedaiError

    def problems(self) -> list[str]:
        """What stops these options from working, one phrase each (empty: none)."""
        return []

    def check(self) -> None:
        """Raise :attr:`error` naming every problem, or return when there is none."""
        if found := self.problems():
            raise self.error("; ".join(found))


def config_from(cls: type[C], flags: argparse.Namespace | Mapping[str, Any], **given: Any) -> C:
    """Build the frozen dataclass ``cls`` from parsed flags.

    Each field takes ``given[field]`` if given, else the flag of the same name, else its
    default. A list for a field whose default is a tuple (or that is annotated as one) becomes
    a tuple, so configs stay hashable and compare equal however they were built.

    Args:
        cls: The config class.
        flags: Parsed flags (an ``argparse.Namespace``) or a mapping of option names.
        given: Field values that do not come from a flag of the same name.
    """
    values = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags)
    chosen = {}
    for spec in dataclasses.fields(cls):
        if spec.name in given:
            value = given[spec.name]
        elif spec.name in values:
            value = values[spec.name]
        else:
            continue
        if isinstance(value, list) and "tuple" in str(spec.type):
            value = tuple(value)
        chosen[spec.name] = value
    return cls(**chosen)
