"""The typed configuration of a run: the schema (config/schema.py), Hydra composition of conf/
(here), validation (config/checks.py); what overrides may name (overrides.py, fields.py) and the
commands' --help / --cfg job (help.py).

Hydra composes conf/ (its compose API, never @hydra.main), OmegaConf checks types against the
dataclasses, and `OmegaConf.to_object` runs once in `load_config`; nothing below sees a DictConfig.
`validate` only checks: it collects every problem and raises one ConfigError naming the overrides.
This package imports nothing from the rest of elama.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from elama.config.checks import Check, derived_dp, validate
from elama.config.overrides import compose_problem, unknown_composed_keys, unknown_override_problems
from elama.config.schema import (
    BlendEntry, CheckpointConfig, ConfigError, DataConfig, ElamaConfig, LoggingConfig,
    ModelConfig, NamedBlend, OptimConfig, ParallelConfig, TrainConfig,
)

__all__ = ["BlendEntry", "Check", "CheckpointConfig", "ConfigError", "DataConfig", "ElamaConfig",
           "LoggingConfig", "ModelConfig", "NamedBlend", "OptimConfig", "ParallelConfig", "TrainConfig",
           "derived_dp", "load_config", "to_dict", "validate"]


def load_config(overrides: Iterable[str] = (), config_name: str = "config") -> ElamaConfig:
    """Compose conf/<config_name>.yaml with Hydra overrides into a typed ElamaConfig."""
    from hydra import compose, initialize_config_module
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    # conf/config.yaml starts its defaults with this schema, so YAML files and command-line
    # overrides are merged into typed nodes: unknown keys and wrong types fail at compose time.
    ConfigStore.instance().store(name="elama_schema", node=ElamaConfig)
    overrides = list(overrides)
    # Hydra's `+key=value` adds a key even to a typed config, where it would be ignored: every
    # override must name a schema field or a config group.
    problems = unknown_override_problems(overrides)
    if problems:
        raise ConfigError(problems)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("elama_conf", version_base="1.3"):
            composed = compose(config_name=config_name, overrides=overrides)
        problems = unknown_composed_keys(composed)
        if problems:
            raise ConfigError(problems)
        return OmegaConf.to_object(composed)
    except OmegaConfBaseException as e:
        raise ConfigError([compose_problem(e)]) from None
    except Exception as e:  # Hydra's own errors: unknown group option, bad override syntax
        if e.__class__.__module__.startswith("hydra"):
            cause = e.__cause__
            raise ConfigError([compose_problem(cause) if isinstance(cause, OmegaConfBaseException)
                               else f"{e}".replace("\n", " ")]) from None
        raise
    finally:
        GlobalHydra.instance().clear()


def to_dict(cfg: ElamaConfig) -> dict:
    """Plain nested dict of the config (for checkpoints and logs)."""
    return dataclasses.asdict(cfg)
