"""The one exception type for errors a user can cause (bad file, column, row or config key)."""


class ForecastingError(ValueError):
    """A message that names the file, column, row or config key and says what to do.

    The CLI prints it as one line and exits with status 2, without a traceback.
    """
