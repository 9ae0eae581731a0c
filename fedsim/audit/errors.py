"""The audit's bad-input error: an option of ``fedsim audit`` out of range (exit code 2)."""

from __future__ import annotations

from typing import Any

from fedsim.errors import BAD_INPUT, FedsimError


class AuditError(FedsimError, ValueError):
    """An audit setting is out of range; the message names the setting, the value and the range."""

    exit_code = BAD_INPUT

    def __init__(self, name: str, value: Any, allowed: str) -> None:
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name}={value!r} is invalid: expected {allowed}")
