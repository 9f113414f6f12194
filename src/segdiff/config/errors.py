"""The error of a bad setting: ConfigError names the dotted key, the value and the problem."""

from __future__ import annotations

from typing import Any

from ..errors import UserError


class ConfigError(UserError):
    """A config value that is unknown, of the wrong type or out of range: `key` (dotted), `value`, `problem`."""

    def __init__(self, key: str, value: Any, problem: str, show_value: bool = True):
        self.key, self.value, self.problem = key, value, problem
        super().__init__(f"{key} = {format_value(value)}: {problem}" if show_value else f"{key}: {problem}")


def format_value(value: Any) -> str:
    """A setting's value as the command line spells it (tuples as 1,2,2; None as none)."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)
