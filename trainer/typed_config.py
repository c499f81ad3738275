"""Typed configuration machinery: dataclass trees built from plain mappings (YAML / JSON).

``from_dict(cls, values)`` converts a mapping into the dataclass ``cls`` field by field,
following the type hints, then runs every ``validate(where)`` method of the tree; any
problem is a ``ConfigError`` whose message starts with the dotted field name
(``training.loss.terms[1].smooth: ...``). ``to_dict(obj)`` is the inverse: plain lists,
dicts and scalars, so ``from_dict(cls, json.loads(json.dumps(to_dict(x)))) == x``. This is
how the pipeline hands each component its section and the component rebuilds the same
typed object (``pipeline/config.py``).

Supported hints: dataclasses, ``int``, ``float`` (an int is accepted), ``str``, ``bool``,
``Optional[X]``, ``Literal[...]``, ``List[X]``, ``Tuple[X, Y, ...]``, ``Dict[str, Any]``,
``Any``, and ``Union`` of "tagged" dataclasses (each with a ``TYPE`` class variable): the
mapping's ``type`` key picks the class (the pixel weight maps); ``Annotated[Base, registry]``
does the same over a dict ``{TYPE: class}`` read at conversion time (the loss-term
registry, so a term registered later is accepted). Other unions are tried in order. A
field without a default is required.

Imports nothing heavy (no TensorFlow, Keras or TFX): config checks stay fast.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Dict, Iterable, Optional

from segbalance.contract import UserError

_NONE = type(None)


class ConfigError(ValueError, UserError):
    """An invalid configuration; the message names the field and what to do."""


def join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def require(ok: bool, where: str, message: str) -> None:
    """ConfigError ``"<where>: <message>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{where}: {message}")


def is_number(value: Any, minimum: Optional[float] = None) -> bool:
    """A finite int/float (not bool), >= ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return minimum is None or value >= minimum


def tag_of(cls) -> Optional[str]:
    return getattr(cls, "TYPE", None)


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is _NONE:
        return "null"
    if origin is typing.Annotated:
        return _describe(args[0])
    if origin is typing.Union:
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict or dataclasses.is_dataclass(annotation):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def convert(value: Any, annotation: Any, where: str) -> Any:
    """``value`` as ``annotation`` (see module docstring); ConfigError naming ``where``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is typing.Annotated and isinstance(annotation.__metadata__[0], dict):
        return _build_tagged(annotation.__metadata__[0].values(), value, where)
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, where)
    if origin is typing.Union:
        if value is None:
            if _NONE in args:
                return None
            raise ConfigError(f"{where}: expected {_describe(annotation)}, got null")
        options = [a for a in args if a is not _NONE]
        tagged = [a for a in options if dataclasses.is_dataclass(a) and tag_of(a)]
        if tagged and len(tagged) == len(options):
            return _build_tagged(tagged, value, where)
        errors = []
        for option in options:
            try:
                return convert(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(options) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: expected {_describe(annotation)}, got {_short(value)}")
    if origin is typing.Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args if a == value):
            raise ConfigError(f"{where}: {_short(value)} is not allowed; use {_describe(annotation)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {_short(value)}")
        return [convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {_short(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}: {_short(value)}")
        return tuple(convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {_short(value)}")
        return dict(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {type(value).__name__} {_short(value)}{_as_number(value)}")
        return float(value)
    if annotation in (int, str, bool):
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {type(value).__name__} {_short(value)}")
        return value
    raise TypeError(f"typed_config: unsupported annotation {annotation!r} at {where}")


def _as_number(value: Any) -> str:
    """How to write a number YAML read as text: PyYAML (YAML 1.1) takes ``3e-3`` and ``1.0e5`` for strings
    (a float needs a dot and a signed exponent: ``3.0e-3``, ``1.0e+5``; QA 27: the message named the field
    but not the fix); "" for text that is no number."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):  # "nan", "inf": no number to suggest
        return ""
    plain = repr(number)
    mantissa, _, exponent = value.strip().lower().partition("e")
    if exponent and ("." not in mantissa or exponent[0] not in "+-"):  # YAML 1.1 wants both (1.0e+5)
        sign, digits = (exponent[0], exponent[1:]) if exponent[0] in "+-" else ("+", exponent)
        dotted = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{sign}{digits}"
        return f" (YAML reads {value} as text: write {dotted if 'e' in plain else plain + ' or ' + dotted})"
    return f" (a number in quotes: write {value.strip()} without them)"


def _build_tagged(classes: Iterable[type], value: Any, where: str):
    by_tag = {tag_of(c): c for c in classes}
    if not isinstance(value, dict) or "type" not in value:
        raise ConfigError(f"{where}: expected a mapping with a 'type' (one of {', '.join(by_tag)}), "
                          f"got {_short(value)}")
    cls = by_tag.get(value["type"])
    if cls is None:
        raise ConfigError(f"{where}.type: unknown type {_short(value['type'])}; choose one of {', '.join(by_tag)}")
    return build(cls, {k: v for k, v in value.items() if k != "type"}, where)


def build(cls, values: Any, where: str = ""):
    """The dataclass ``cls`` from the mapping ``values`` (types converted, not yet validated)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of fields, got "
                          f"{type(values).__name__} {_short(values)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    unknown = sorted(set(values) - set(names))
    if unknown:
        moved = getattr(cls, "MOVED", {}).get(unknown[0])
        if moved:
            raise ConfigError(f"{join(where, unknown[0])} is not a setting any more: {moved}")
        raise ConfigError(f"unknown field {join(where, unknown[0])}; known fields"
                          f"{' of ' + where if where else ''}: {', '.join(names)}")
    for f in fields:
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{join(where, f.name)}: required field is missing")
    return cls(**{k: convert(v, hints[k], join(where, k)) for k, v in values.items()})


def validate_tree(obj: Any, where: str = "") -> None:
    """Run ``validate(where)`` of every dataclass in the tree, children first."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            validate_tree(getattr(obj, f.name), join(where, f.name))
        check = getattr(obj, "validate", None)
        if callable(check):
            check(where)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            validate_tree(item, f"{where}[{i}]")


def from_dict(cls, values: Any, where: str = ""):
    """``build`` then ``validate_tree``: the typed, checked configuration."""
    obj = build(cls, {} if values is None else values, where)
    validate_tree(obj, where)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars); a tagged dataclass gets its ``type`` key first."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: Dict[str, Any] = {}
        if tag_of(type(obj)):
            out["type"] = tag_of(type(obj))
        for f in dataclasses.fields(obj):
            out[f.name] = to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def field_paths(cls, where: str = "", expand_tagged: bool = False) -> list:
    """Dotted paths of the leaf fields of ``cls`` (nested dataclasses expanded): what tests walk."""
    hints = typing.get_type_hints(cls)
    paths = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            paths += field_paths(hint, join(where, f.name), expand_tagged)
        else:
            paths.append(join(where, f.name))
    return paths
