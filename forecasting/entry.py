"""`python -m forecasting` and the `forecasting` command: the top-level help without importing torch.

`python -m forecasting --help` only lists the subcommands, yet LightningCLI would import torch,
Lightning and every module the CLI names first (seconds to tens of seconds: BENCHMARKS.md). This
prints the list from SUBCOMMANDS (tests/test_entry.py checks it against the CLI's) and hands every
other command line to `forecasting.cli.main`, which builds the full parser.
"""

import gc
import sys

# name -> one line; keep in step with ForecastingCLI.subcommands() (a test compares them).
SUBCOMMANDS = {
    "fit": "train a model: python -m forecasting fit --config configs/volatility.yaml",
    "validate": "score a checkpoint on the validation split (--ckpt_path)",
    "test": "score a checkpoint on the test split, next to the baselines (--ckpt_path)",
    "predict": "write dated forecasts to a CSV (--ckpt_path; data.predict_path for new data)",
    "lr_find": "sweep the learning rate and suggest one (plot: lr_find.png in the log dir)",
    "diagnose": "train a few hundred steps and report PASS / WARN / FAIL on why an LSTM does not learn",
}
# Runs of many fits, handled by forecasting/cli.py's main() before LightningCLI.
RUNNERS = {
    "backtest": "walk-forward folds with fresh fits, pooled tables, Diebold-Mariano vs the baselines",
    "tune": "Optuna search over config keys that says why trials failed (--tune.space, --tune.trials)",
}

HELP = """usage: python -m forecasting [-h] [-c CONFIG] [--print_config[=flags]] {names} ...

A PyTorch Lightning template for forecasting financial time series with stacked LSTMs.

options:
  -h, --help            show this help message and exit
  -c CONFIG, --config CONFIG
                        path to a configuration file (YAML); repeat to stack overlays
  --print_config[=flags]
                        print the configuration after applying all other arguments and exit

subcommands (`python -m forecasting <subcommand> --help` lists its options):
{lines}
"""


def help_text() -> str:
    every = {**SUBCOMMANDS, **RUNNERS}
    width = max(map(len, every)) + 2
    lines = "\n".join(f"  {name:<{width}}{text}" for name, text in every.items())
    return HELP.format(names="{" + ",".join(every) + "}", lines=lines)


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv in (["-h"], ["--help"]):
        print(help_text(), end="")
        sys.exit(0)
    # torch, Lightning and the rest: imported only when they are used. They create ~430k objects and
    # almost no garbage, yet the cyclic garbage collector would scan them all, again and again: several
    # full collections while importing and more when Python exits (seconds on a small CPU:
    # BENCHMARKS.md). So no collection while importing, then gc.freeze(): what the imports made is
    # never scanned again (nor collected at exit, as the OS frees it). Objects of the run itself are
    # collected as usual.
    gc.disable()
    try:
        from forecasting.cli import main as cli_main
    finally:
        gc.freeze()
        gc.enable()
    cli_main(args)
