"""privevo: Private Evolution (DP synthetic images through foundation-model APIs).

The library holds the whole algorithm and its privacy analysis; the Kubeflow
components in ``privevo.components`` are thin adapters over it. Importing privevo
is cheap: ``privevo.run``, ``privevo.open_run`` and ``privevo.RunResult`` load
:mod:`privevo.api` on first use, and nothing here imports kfp, google-cloud-storage
or fastapi.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["RunResult", "__version__", "open_run", "run"]

if TYPE_CHECKING:
    from privevo.api import RunResult, open_run, run


def __getattr__(name: str) -> Any:
    """Load the API on first use of one of its names (PEP 562)."""
    if name in ("run", "open_run", "RunResult"):
        from privevo import api

        return getattr(api, name)
    raise AttributeError(f"module 'privevo' has no attribute {name!r}")
