"""One error base: every fedsim error is a FedsimError, and the CLI turns each into a message and an exit code."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from typer.testing import CliRunner

import cli.run
import fedsim
from cli.app import app
from fedsim.errors import BAD_INPUT, RUN_FAILED, FedsimError
from fedsim.launch import LaunchError


def fedsim_modules():
    for info in pkgutil.walk_packages(fedsim.__path__, "fedsim."):
        if info.name != "fedsim.__main__":
            yield importlib.import_module(info.name)


def test_every_exception_class_fedsim_defines_subclasses_fedsim_error():
    defined = {
        obj
        for module in fedsim_modules()
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == module.__name__
    }
    assert len(defined) >= 9  # ConfigError, FrameError, the relay's five, LaunchError, TooFewClients
    assert [c.__qualname__ for c in defined if not issubclass(c, FedsimError)] == []


def test_bad_input_exits_2_with_one_line_and_no_traceback():
    result = CliRunner().invoke(app, ["run", "--rounds", "0"])
    assert result.exit_code == BAD_INPUT
    assert "error: rounds=0 is invalid: expected an integer in [1, 100000]" in result.output
    assert "Traceback" not in result.output


def test_debug_adds_the_traceback():
    result = CliRunner().invoke(app, ["--debug", "run", "--rounds", "0"])
    assert result.exit_code == BAD_INPUT
    assert "Traceback" in result.output and "ConfigError" in result.output
    assert "error: rounds=0 is invalid" in result.output


def fail_launch(exc: BaseException):
    def launch(*args, **kwargs):
        raise exc
    return launch


@pytest.mark.parametrize("debug", [False, True])
def test_a_run_that_fails_exits_1_naming_why(monkeypatch, tmp_path, debug):
    monkeypatch.setattr("fedsim.launch.launch_local", fail_launch(LaunchError("rank 2 exited with code 9")))
    args = ["--debug"] * debug + ["run", "--run-dir", str(tmp_path / "out"), "--rounds", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == RUN_FAILED
    assert "error: rank 2 exited with code 9" in result.output
    assert ("Traceback" in result.output) == debug


def test_an_unexpected_exception_is_an_internal_error_exit_1(monkeypatch, tmp_path):
    monkeypatch.setattr(cli.run, "make_progress", fail_launch(KeyError("oops")))
    result = CliRunner().invoke(app, ["run", "--run-dir", str(tmp_path / "out"), "--rounds", "1"])
    assert result.exit_code == RUN_FAILED
    assert "error: internal error: KeyError: 'oops'" in result.output
    assert "--debug" in result.output and "Traceback" not in result.output
