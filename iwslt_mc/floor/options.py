"""Recipe and stage options as text and values, without torch: the ``--set key=value`` parser
(:func:`parse_set`) and its inverse (:func:`set_value_text`, what ``plan`` writes for ``build --set``), and the
type checks that read an option from YAML or ``--set`` text into its declared type (:func:`coerce`,
:func:`choice`), one-line :class:`~iwslt_mc.errors.UserError` naming the option otherwise. The stages'
option schemas (:class:`iwslt_mc.stages.base.StageOptions`) and the recipe reader use them."""

from __future__ import annotations

import types
import typing
from typing import Any

from ..errors import UserError


def choice(value, allowed, what: str):
    if value not in allowed:
        raise UserError(f"{what} must be one of {', '.join(map(str, allowed))}, not {value!r}")
    return value


def coerce(value, tp, what: str):
    """Coerce ``value`` (from YAML or a ``--set key=value`` string) to type ``tp`` or raise UserError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.strip().lower() in ("none", "null", "~") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, what)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{what}: invalid value {value!r}")
    if origin is typing.Literal:
        return choice(value, args, what)
    if origin in (list, tuple):
        if isinstance(value, str):
            s = value.strip()
            value = _yaml_value(s, what, "a list, e.g. [lm_head, audio_tower]") if s.startswith("[") else \
                [x.strip() for x in s.split(",") if x.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        return [(coerce(v, inner, what) if inner is not Any else v) for v in value]
    if origin is dict:
        if isinstance(value, str):
            value = _yaml_value(value, what, "a mapping, e.g. {key: value}")
        if not isinstance(value, dict):
            raise UserError(f"{what}: expected a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise UserError(f"{what}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"{what}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise UserError(f"{what}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"{what}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{what}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"{what}: expected a string, got {value!r}")
        return str(value)
    return value


def _yaml_value(text: str, what: str, expected: str):
    """``text`` read as YAML, or a one-line UserError naming the option (an unclosed ``[`` is the usual cause)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{what}: {text!r} is not valid YAML ({problem}); write {expected}") from None


def parse_set(pairs: list[str] | None) -> dict:
    """``["key=value", ...]`` -> dict; values are YAML scalars/lists (``layers=[3,5]``, ``r=64``)."""
    import yaml

    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise UserError(f"--set {p!r}: expected key=value")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def set_value_text(v) -> str:
    """``v`` as the VALUE of a ``--set key=VALUE`` that :func:`parse_set` reads back (``[3,5]``, ``true``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(set_value_text(x) for x in v) + "]"
    return str(v)
