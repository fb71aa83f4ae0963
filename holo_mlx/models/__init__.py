"""Model families and the registry that picks one from a checkpoint's config.json.

A family is a module under holo_mlx/models/ that builds a `Family` (base.py); the built-in ones
are registered here when first asked for, others (tests' toy families) call `register`.
The engine and the server only use what base.py names, so adding a family is a new module, its
fixture and its parity tests.
"""

from .base import ConfigError, Family, ShardingError, VisionLanguageModel

_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make a family loadable; a later registration under the same name replaces the earlier one."""
    _FAMILIES[family.name] = family
    return family


def families() -> list[Family]:
    _load_builtin()
    return list(_FAMILIES.values())


def family_for(config: dict) -> Family:
    """The family of a config.json: by model_type first, then by architectures."""
    model_type, architectures = config.get("model_type"), config.get("architectures") or []
    known = families()
    for family in known:
        if model_type in family.model_types:
            return family
    for family in known:
        if any(name in family.architectures for name in architectures):
            return family
    served = ", ".join(f"{family.name} ({family.description})" for family in known)
    raise ConfigError(f"unsupported architecture (model_type={model_type!r}, architectures={architectures}); "
                      f"holo-mlx runs: {served}")


def _load_builtin() -> None:
    # Imported here, not by the families themselves: a family never imports the registry, so the
    # two make no import circle.
    from . import qwen2_5_vl, qwen3_5, qwen3_vl

    for family in (qwen2_5_vl.FAMILY, qwen3_vl.FAMILY, qwen3_5.FAMILY):
        _FAMILIES.setdefault(family.name, family)


__all__ = ["ConfigError", "Family", "ShardingError", "VisionLanguageModel", "families", "family_for", "register"]
