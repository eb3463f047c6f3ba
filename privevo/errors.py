"""User-facing errors: one line that says what is wrong and how to fix it."""

import contextlib
from collections.abc import Iterator


class UserError(Exception):
    """Bad input from the user (config, data, paths, budgets).

    The command line prints ``error: <message>`` on one line and exits with code 2,
    without a traceback. Messages must never contain private data (pixel values,
    embeddings, vote counts); naming a file or a config key is fine.
    """

    exit_code = 2


#: The optional extras of the package and the top-level modules each one brings.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "kfp": ("kfp", "kfp_server_api"),
    "gcs": ("google",),
    "serve": ("fastapi", "uvicorn"),
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The extra whose module ``error`` failed to import, or None when the module belongs to no extra."""
    top = (error.name or "").split(".")[0]
    return next((extra for extra, modules in EXTRA_MODULES.items() if top in modules), None)


def extra_error(extra: str, what: str = "this command") -> UserError:
    """The one-line error of a feature whose extra is not installed."""
    return UserError(f"{what} needs the {extra} extra: pip install 'privevo[{extra}]'")


@contextlib.contextmanager
def needs_extra(extra: str, what: str) -> Iterator[None]:
    """Turn the import of a missing ``extra`` inside the block into a one-line :class:`UserError` naming ``what`` needs it."""
    try:
        yield
    except ModuleNotFoundError as error:
        if missing_extra(error) != extra:
            raise
        raise extra_error(extra, what) from None
