"""hdcctl subcommands that live in their own modules.

Every module in this package that defines `register(app: typer.Typer) -> None` is loaded by hdcctl
(hdc_operator.cli) at start-up; `register` adds its commands or sub-apps, e.g.

    def register(app):
        @app.command("simulate-autoscaling")
        def simulate(...): ...

So a new subcommand is a new file here, and hdc_operator/cli.py stays as it is.
"""
