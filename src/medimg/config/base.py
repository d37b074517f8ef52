"""Reading params.yaml: the YAML itself, the selected profile, and one way to name a bad value.

The file holds the sample profile as its base values. `profile: full` (or any other
name under `profiles:`) applies that profile's dotted-key overrides on top, for
example `datasets.chest_xray.fetch.source: https://...`. An override must name a key
that exists in the base, so a typo cannot silently add a knob that nothing reads.

Each stage validates only the part of the file it reads (medimg.config.datasets,
.runs, .studies), so that editing one part's schema re-runs only the stages that
read it; `medimg params` validates the whole file (medimg.config.params).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from medimg.errors import UserError

PARAMS_FILE = "params.yaml"
# The base values are this profile's; `profiles.sample` may exist (empty) for DVC.
BASE_PROFILE = "sample"

Model = TypeVar("Model", bound=BaseModel)


class ParamsError(UserError, ValueError):
    """params.yaml is missing, unreadable or holds an invalid value."""


class StrictModel(BaseModel):
    """A section of params.yaml: unknown keys and loose types are errors.

    extra="forbid": an unknown key is an error, not a silently ignored knob.
    strict=True: a value must have its key's type: `epochs: true` is not 1, and
    `batch_size: "8"` is not 8 (an int stands for a float, as YAML writes 1 for 1.0).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _list_as_tuple(value: Any) -> Any:
    # YAML has no tuples: a fixed-length pair is written as a list.
    return tuple(value) if isinstance(value, list) else value


def _refuse_bool(value: Any) -> Any:
    # Literal[1, 3] would take `true` for 1, since True == 1 in Python.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {value}")
    return value


# Wrap a tuple-typed field: its YAML list is checked strictly as the tuple.
AsTuple = BeforeValidator(_list_as_tuple)
# Wrap a Literal of numbers: a boolean is not one of them.
NotBool = BeforeValidator(_refuse_bool)


def _ordered(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"must be [low, high] with low <= high, got {list(pair)}")
    return pair


# Types several sections share.
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Seed = Annotated[int, Field(ge=0)]
# A zoom factor range [low, high] (1.0 = none), as a list in YAML.
ZoomRange = Annotated[
    tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]],
    AsTuple,
    AfterValidator(_ordered),
]


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys, reading floats as YAML 1.2 does.

    Duplicate keys: PyYAML keeps the last one silently, DVC's parser refuses the file;
    here the error names the key and both lines. Keys that a merge key (`<<: *x`)
    brings in may be overridden: that is what a merge key is for.
    Floats: YAML 1.1 reads `1e-4` as a string; DVC (YAML 1.2) reads it as a number.
    """


def _construct_mapping(loader: _ParamsLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise ParamsError(
                f"{loader.name}: key {key!r} appears twice in one mapping, at line "
                f"{seen[key].start_mark.line + 1} and line {key_node.start_mark.line + 1}; "
                "keep one"
            )
        seen[key] = key_node
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_ParamsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> Any:
    """The YAML document in `path`; ParamsError when missing, not YAML or with a duplicate key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found (run from the repository root, where params.yaml is)")
    text = path.read_text()
    loader = _ParamsLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    finally:
        loader.dispose()


def apply_overrides(
    raw: dict[str, Any], overrides: dict[str, Any], origin: str, open_sections: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Return a copy of `raw` with each dotted key of `overrides` replaced.

    A dotted key must name an existing key of `raw` (`origin` names the overrides in
    the error message), so that a typo cannot add a knob nothing reads. Under an entry
    of an `open_sections` section (`runs.<name>.`) a key may be added: a run takes keys
    it does not state from run_defaults, and its schema refuses unknown keys anyway.
    """
    for dotted in overrides:
        inner = [key for key in overrides if key.startswith(f"{dotted}.")]
        if inner:
            # Which wins would depend on the order of the keys (a merged profile's
            # come first): say so instead.
            raise ParamsError(
                f"{origin}: override keys {dotted!r} and {inner[0]!r} overlap; "
                f"set the whole {dotted!r} or only its parts, not both"
            )
    result = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = result
        for depth, part in enumerate(parts):
            if (
                isinstance(node, dict)
                and part not in node
                and depth >= 2
                and parts[0] in open_sections
            ):
                node[part] = {}
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[: depth + 1])
                raise ParamsError(
                    f"{origin}: override key {dotted!r} does not exist in params "
                    f"(no {where!r}); an override may only change an existing key"
                )
            if depth == len(parts) - 1:
                node[part] = copy.deepcopy(value)
            else:
                node = node[part]
    return result


def apply_profile(raw: Any, path: Path = Path(PARAMS_FILE)) -> dict[str, Any]:
    """`raw` (the whole file) with its selected profile's dotted-key overrides applied.

    A profile that starts from another takes its overrides with a YAML merge key
    (`<<: *full-local`): the loaded mapping then holds both, so DVC, which records
    `profiles.<selected>`, sees every value the profile sets.
    """
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ParamsError(f"{path}: profiles must be a mapping of profile names to overrides")
    profile = raw.get("profile")
    if profile is None:
        raise ParamsError(
            f"{path}: missing key 'profile' (allowed: {BASE_PROFILE!r} or one of "
            f"{sorted(profiles)})"
        )
    if profile == BASE_PROFILE and profile not in profiles:
        return raw
    if profile not in profiles:
        raise ParamsError(
            f"{path}: profile = {profile!r} is not defined; allowed: {BASE_PROFILE!r} or one "
            f"of {sorted(profiles)} (under 'profiles:')"
        )
    overrides = profiles[profile] or {}
    if not isinstance(overrides, dict):
        raise ParamsError(f"{path}: profiles.{profile} must be a mapping of dotted keys to values")
    return apply_overrides(raw, dict(overrides), f"{path}: profiles.{profile}", ("runs",))


def load_raw(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """params.yaml read and its profile applied, not yet validated."""
    path = Path(path)
    return apply_profile(read_yaml(path), path)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `override` on top, mapping by mapping (a value that is not a mapping
    replaces the base's)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def section(raw: Mapping[str, Any], dotted: str, path: Path) -> Any:
    """The value at `dotted` (e.g. "datasets.chest_xray") of `raw`; ParamsError when absent."""
    node: Any = raw
    for depth, part in enumerate(dotted.split(".")):
        if not isinstance(node, Mapping) or part not in node:
            where = ".".join(dotted.split(".")[:depth]) or "the top level"
            known = sorted(node) if isinstance(node, Mapping) else []
            raise ParamsError(f"{path}: no {part!r} under {where}; it has {known}")
        node = node[part]
    return node


def shown_value(value: Any) -> str:
    """A value as an error message shows it: a mapping is elided."""
    return "{...}" if isinstance(value, dict) else repr(value)


def error_lines(
    err: ValidationError, where: str, origin: Any = None, noun: str = "key"
) -> list[str]:
    """One line per problem of `err`: "<where>.<key> = <value>: <what is wrong>".

    origin: a function of the error's key path returning where the value came from
    (e.g. run defaults), shown as "(from ...)" when it is not `where` itself.
    A model-level check (a value_error without a key) names its own keys.
    """
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        key = ".".join(filter(None, (where, *loc))) or "(top level)"
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = f"unknown {noun} (a typo? `medimg params` prints every known key)"
        if not loc and e["type"] == "value_error":
            lines.append(f"{where}: {message}" if where else message)
            continue
        source = origin(loc) if origin else None
        came_from = f" (from {source})" if source and source != key else ""
        lines.append(f"{key} = {shown_value(e.get('input'))}{came_from}: {message}")
    return lines


def validate(model: type[Model], value: Any, where: str, path: Path, origin: Any = None) -> Model:
    """`value` validated as `model`; a ParamsError naming `where` and each bad key otherwise."""
    try:
        return model.model_validate(value)
    except ValidationError as err:
        lines = error_lines(err, where, origin)
        raise ParamsError("\n  ".join([f"{path}: invalid parameters", *lines])) from None
