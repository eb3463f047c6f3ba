"""The configs and demo models that come with privevo, and the one rule that finds them.

The repository keeps them in ``configs/`` and ``models/`` (what the README, the images and the
tests name); an installed package carries copies in ``privevo/_shipped/`` (``setup.py`` puts them
there when it builds a wheel). So ``privevo.run("tiny")`` and ``privevo run --config tiny`` work
from any folder:

- a config argument that is not an existing file but names a shipped config (``tiny``,
  ``tiny.yaml``, ``configs/tiny.yaml``) loads the shipped one;
- for a local run, a relative ``model.path`` or ``evaluation.classifier_path`` that does not exist
  under the working directory but names a shipped model (``models/tiny-unet``) becomes the shipped
  copy's absolute path (recorded as such in run.json). Compiled pipelines keep the paths as written:
  a pod resolves them inside its image.
"""

from __future__ import annotations

import os
from pathlib import Path

from privevo.config import Config, config_to_dict, load_config, parse_config
from privevo.errors import UserError

_PACKAGE = Path(__file__).resolve().parent
CONFIGS_DIR = "configs"
MODELS_DIR = "models"


def shipped_root() -> Path | None:
    """Where the shipped configs/ and models/ are: the installed package's copy, else the source checkout holding it."""
    installed = _PACKAGE / "_shipped"
    if installed.is_dir():
        return installed
    checkout = _PACKAGE.parent  # a source checkout or an editable install: the repository root
    if (checkout / "pyproject.toml").is_file() and (checkout / CONFIGS_DIR).is_dir():
        return checkout
    return None


def shipped_configs() -> list[str]:
    """The names of the shipped configs (``tiny``, ``demo``, ...)."""
    root = shipped_root()
    return sorted(p.stem for p in (root / CONFIGS_DIR).glob("*.yaml")) if root else []


def config_file(config: str | os.PathLike[str]) -> Path:
    """The config file ``config`` names: an existing file as given, else the shipped config of that name."""
    path = Path(config)
    if path.is_file():
        return path
    root = shipped_root()
    name = path.name if path.suffix == ".yaml" else f"{path.name}.yaml"
    plain = path.parent in (Path(), Path(CONFIGS_DIR))  # tiny, tiny.yaml or configs/tiny.yaml
    if plain and root is not None and (root / CONFIGS_DIR / name).is_file():
        return root / CONFIGS_DIR / name
    raise UserError(f"config file {config} does not exist (shipped configs: {', '.join(shipped_configs()) or 'none'})")


def local_model_path(path: str | None) -> str | None:
    """``path`` as a local run loads it: the shipped copy of a relative model folder missing from the working directory."""
    if path is None or os.path.isabs(path) or "://" in path or os.path.exists(path):
        return path
    root = shipped_root()
    parts = Path(path).parts
    if root is not None and parts[:1] == (MODELS_DIR,) and (root / path).is_dir():
        return str(root / path)
    return path


def with_local_models(config: Config) -> Config:
    """``config`` with its model and classifier paths resolved by :func:`local_model_path` (for runs on this machine)."""
    weights_path = config.model.weights_path
    model_path, classifier_path = local_model_path(weights_path), local_model_path(config.evaluation.classifier_path)
    if (model_path, classifier_path) == (weights_path, config.evaluation.classifier_path):
        return config
    data = config_to_dict(config)
    if model_path is not None:
        data["model"]["path"] = model_path
    data["evaluation"]["classifier_path"] = classifier_path
    return parse_config(data, source="config")


def load(config: str | os.PathLike[str], overrides: list[str] | None = None, local: bool = False) -> Config:
    """Load a config file or shipped config with ``--set`` overrides; ``local``: resolve its models for a run here."""
    loaded = load_config(config_file(config), overrides)
    return with_local_models(loaded) if local else loaded
