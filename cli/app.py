"""The ``fedsim`` command line: the commands, and one place that turns errors into exit codes.

Exit codes: 0 success, 1 the run failed, 2 bad input (a message names the field, the value
and the allowed range). Every error reaches :class:`FedsimGroup`, which prints it as one
line (:func:`cli.render.report_error`); ``fedsim --debug ...`` adds the traceback.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from cli.attack import attack_command
from cli.audit import audit_command
from cli.budget import budget_app
from cli.compare import compare_command
from cli.render import report_error
from cli.run import run_command


class FedsimGroup(TyperGroup):
    """The top-level group: any exception from a command becomes a message and an exit code."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # typer's own: exit codes, usage errors
            raise
        except Exception as exc:
            raise typer.Exit(report_error(exc, debug=bool(ctx.params.get("debug")))) from None


app = typer.Typer(
    cls=FedsimGroup,
    help=(
        "fedsim: federated LoRA fine-tuning under differential privacy.\n\n"
        "Each client is a torch.distributed process running DP-SGD (Opacus) on its own data; "
        "updates leave a client only under pairwise secure-aggregation masks; a PRV accountant "
        "records every client's privacy budget in a ledger that `fedsim budget` re-checks."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def options(
    debug: bool = typer.Option(False, "--debug", help="On an error, show the traceback as well as the message."),
) -> None:
    """fedsim: federated LoRA fine-tuning under differential privacy."""


app.command("run")(run_command)
app.command("compare")(compare_command)
app.add_typer(budget_app, name="budget")
app.command("attack")(attack_command)
app.command("audit")(audit_command)


def main() -> None:
    """Console-script entry point."""
    app()
