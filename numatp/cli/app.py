"""The typer app that the `numatp` commands register on: each command module under
numatp/cli/ decorates its functions with `app.command()` or `bench_app.command()`, and
main.py imports them all before running the app."""
import typer

# -h as well as --help, as in llama.cpp; subcommands inherit it from the app's context.
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings=HELP_OPTIONS,
                  help="NUMA-aware tensor-parallel CPU inference for GGUF models.")
bench_app = typer.Typer(no_args_is_help=True, context_settings=HELP_OPTIONS,
                        help="Benchmarks: memory, kernels, allreduce, decode.")
app.add_typer(bench_app, name="bench")


def _print_version(wanted: bool):
    if wanted:
        from numatp import __version__
        print(f"numatp {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version,
                                          is_eager=True, help="Print the version and exit.")):
    """Options of `numatp` itself, given before the command."""
