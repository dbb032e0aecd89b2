"""Reading the project's YAML data files (mappings, rule sets, rule tests) with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from service.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)


def read_yaml(path: Path, what: str) -> Any:
    """The parsed YAML of ``path``; a missing file or bad YAML is one ConfigError naming it."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: {what} not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc


def problems(exc: ValidationError) -> str:
    """Every validation problem as ``location: message``, joined."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )


def read_model(path: Path, model: type[Model], what: str) -> Model:
    """A YAML file validated as ``model``; every problem is reported with the file."""
    raw = read_yaml(path, what)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {problems(exc)}") from exc
