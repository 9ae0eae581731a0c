"""The one base class of fedsim's errors, and what each kind means to a user.

Every error fedsim raises on purpose subclasses :class:`FedsimError`; the CLI turns one
into a message and an exit code (:attr:`FedsimError.exit_code`: 2 for bad input, 1 for a
run that failed) and shows a traceback only with ``--debug``. The subclasses live beside
the code that raises them (``ConfigError`` in :mod:`fedsim.config`, ``FrameError`` in
:mod:`fedsim.transport.framing`, ...) and keep their builtin base too (``ValueError``,
``RuntimeError``), so callers that caught those still do.

:mod:`secagg` and :mod:`accounting` are standalone libraries and never import fedsim: their
errors (``secagg.ProtocolError``, ``accounting.LedgerError``, ...) are theirs; fedsim
turns the ones that reach it into its own where the meaning changes (a calibration that
fails in preflight is a ``ConfigError``).
"""

from __future__ import annotations

BAD_INPUT = 2
"""Exit code for input the user can fix: a message names the field, the value and the range."""

RUN_FAILED = 1
"""Exit code for a run that started and failed."""


class FedsimError(Exception):
    """Base of every error fedsim raises on purpose; ``exit_code`` is what the CLI exits with."""

    exit_code: int = RUN_FAILED
