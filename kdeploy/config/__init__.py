"""Profiles: the schema (pydantic models and presets, in ``schema`` and ``sections``), the
cross-field rules (one small function each), the typed method configs, the loader (YAML,
``extends:``, ``--set``, file:line errors) and where profiles are found.
``from kdeploy.config import load_profile``."""

from kdeploy.config.discovery import available_profiles, profile_dirs, resolve_profile_path
from kdeploy.config.loader import (
    LoadedProfile,
    dump_profile,
    json_schema,
    load_profile,
    locate_key,
)
from kdeploy.config.methods import FineTune
from kdeploy.config.schema import (
    ALWAYS_DENSE,
    DistillConfig,
    Profile,
    QuantizeConfig,
    SparsifyConfig,
    StudentConfig,
    Target,
)
from kdeploy.config.sections import (
    DEFAULT_EVAL_BATCH,
    BenchConfig,
    Budgets,
    ExportConfig,
    ExportShapes,
    TransferConfig,
    VerifyConfig,
)

__all__ = [
    "ALWAYS_DENSE",
    "DEFAULT_EVAL_BATCH",
    "BenchConfig",
    "Budgets",
    "DistillConfig",
    "ExportConfig",
    "ExportShapes",
    "FineTune",
    "LoadedProfile",
    "Profile",
    "QuantizeConfig",
    "SparsifyConfig",
    "StudentConfig",
    "Target",
    "TransferConfig",
    "VerifyConfig",
    "available_profiles",
    "dump_profile",
    "json_schema",
    "load_profile",
    "locate_key",
    "profile_dirs",
    "resolve_profile_path",
]
