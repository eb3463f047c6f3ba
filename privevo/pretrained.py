"""Backends loaded from a model folder: ``from_pretrained(path, **options)``, diffusers style.

``from_config(config)`` is ``from_pretrained(config.model.path, **pretrained_options(config))``:
the experiment config only supplies the options, so ``pipeline.py serve`` loads the same model
from a folder and a few options without making up an experiment. No torch here: the text
backend behind an API imports its base class without it.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from privevo.config import Config


class Pretrained(abc.ABC):
    """A backend with ``from_pretrained(name_or_path, **options)`` and ``from_config`` built on it."""

    @classmethod
    @abc.abstractmethod
    def pretrained_options(cls, config: Config) -> dict[str, Any]:
        """``from_pretrained``'s options as an experiment config sets them (its ``model`` section and the fields the
        backend's ``config_fields`` name)."""

    @classmethod
    @abc.abstractmethod
    def from_pretrained(cls, name_or_path: str, *args: Any, **options: Any) -> Self:
        """Load the model folder (a local folder, a gs:// prefix with its sha256, or a hub name in the local cache),
        offline; bad paths and options are one-line UserErrors."""

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """The model at ``config.model.path`` with the config's options."""
        path = config.model.weights_path
        assert path is not None  # the config requires a path for in-process kinds
        return cls.from_pretrained(path, **cls.pretrained_options(config))
