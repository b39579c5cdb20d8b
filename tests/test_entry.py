"""`python -m forecasting --help` answers without importing torch, and lists the CLI's own subcommands."""

import subprocess
import sys

from forecasting.cli import ForecastingCLI
from forecasting.entry import SUBCOMMANDS, help_text
from tests.conftest import ROOT


def test_quick_help_lists_exactly_the_cli_subcommands():
    assert list(SUBCOMMANDS) == list(ForecastingCLI.subcommands())
    assert all(f"  {name} " in help_text() for name in SUBCOMMANDS)


def test_top_level_help_imports_neither_torch_nor_lightning():
    code = "import sys; sys.argv = ['forecasting', '--help']; import runpy\n"
    code += "try:\n    runpy.run_module('forecasting', run_name='__main__')\n"
    code += "except SystemExit as e:\n    assert e.code == 0\n"
    heavy = "('torch', 'lightning', 'matplotlib', 'pandas')"
    code += f"print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "usage: python -m forecasting" in out and "diagnose" in out
    assert out.strip().splitlines()[-1] == "[]"


def test_a_run_builds_the_parser_of_its_own_subcommand_only(cli_args, tmp_path, monkeypatch):
    from forecasting.cli import main, requested_subcommand

    assert requested_subcommand(["--config", "fit", "validate", "--ckpt_path", "x"]) == "validate"
    assert requested_subcommand(["-c", "a.yaml", "--print_config", "test"]) == "test"
    assert requested_subcommand(["--config=a.yaml", "fitt"]) is None  # unknown: full parser, list of choices
    monkeypatch.chdir(tmp_path)
    cli = main(cli_args("fit", "configs/volatility.yaml", "--trainer.fast_dev_run", "1"))
    assert list(cli.parser._subcommands_action.choices) == ["fit"]
    assert cli.trainer.state.finished
    assert not (tmp_path / "checkpoints").exists()  # fast_dev_run: Lightning alone writes <cwd>/checkpoints


def test_the_imports_are_frozen_out_of_garbage_collection_and_it_runs_on(monkeypatch):
    import gc

    import forecasting.cli
    from forecasting import entry

    seen = {}
    def record(args):
        seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count())

    monkeypatch.setattr(forecasting.cli, "main", record)
    try:
        entry.main(["fit", "--config", "configs/volatility.yaml"])
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
    # The command ran with the collector on, and every object the imports made (this process's modules:
    # hundreds of thousands) in the permanent generation, which no collection scans.
    assert seen["enabled"] and seen["frozen"] > 100_000


def test_a_spawned_process_importing_the_main_module_does_not_run_the_cli(capsys):
    import runpy

    runpy.run_module("forecasting.__main__", run_name="__mp_main__")  # what a spawned worker does
    assert capsys.readouterr().out == ""
