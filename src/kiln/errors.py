"""The one error type users see: a single line that says what is wrong and how to fix it."""


class KilnError(Exception):
    """Bad input (config, data, checkpoint, argument). The CLI prints it as one line and exits 2."""
