"""User-facing errors: one line that says what is wrong and how to fix it."""


class UserError(Exception):
    """Bad input from the user (config, data, paths, budgets).

    The command line prints ``error: <message>`` on one line and exits with code 2,
    without a traceback. Messages must never contain private data (pixel values,
    embeddings, vote counts); naming a file or a config key is fine.
    """

    exit_code = 2
