"""The one exception type for errors a user can cause (bad file, column, row or config key)."""

import argparse


class ForecastingError(ValueError):
    """A message that names the file, column, row or config key and says what to do.

    The CLI prints it as one line and exits with status 2, without a traceback.
    """


class OneLineParser(argparse.ArgumentParser):
    """argparse for our own subcommands (backtest, tune): a usage error becomes a ForecastingError,
    so it prints as one line like every other refusal, not argparse's usage block and exit."""

    def error(self, message: str):
        raise ForecastingError(f"{self.prog}: {message} (see {self.prog} --help)")
