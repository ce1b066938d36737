"""Checks plain settings (nested dicts and lists, as a config file gives them) against their
declaration: a dataclass whose fields have type hints and defaults.

:func:`check_settings` lists every problem at once: a key that the declaration lacks (with
the closest declared names), a value of the wrong type, a value outside its choices. It
understands ``int``, ``float`` (an int is accepted), ``bool``, ``str``, ``None``, unions,
``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, ``Literal[...]``, ``Any``, nested
dataclasses, and two annotations of this module: :class:`Choices` (a ``str`` whose values
come from a registry, looked up only when checked) and :class:`OneOf` (a dict whose
declaration is chosen by one of its keys, e.g. a dataset spec by its ``kind``).

Values marked :data:`UNCHECKED` (an unresolved interpolation, a setting still to be given)
pass any check. Nothing here knows Hydra or OmegaConf.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

#: A value that is not known yet (a ``${...}`` to resolve, a ``???`` to give): never wrong.
UNCHECKED = object()


@dataclass(frozen=True)
class Choices:
    """A string setting whose values are the keys of ``registry`` (``"module:name"``), or the
    values themselves when ``registry`` is a tuple."""

    registry: str | tuple[str, ...]

    def values(self) -> list[str]:
        if isinstance(self.registry, tuple):
            return list(self.registry)
        module, _, name = self.registry.partition(":")
        return sorted(getattr(importlib.import_module(module), name))


@dataclass(frozen=True, eq=False)  # hashed by identity: typing hashes annotations
class OneOf:
    """A mapping declared by the dataclass ``options[value[key]]``; without ``key`` it is
    declared by ``options[default]`` when ``default`` is set."""

    key: str
    options: Mapping[str, type]
    default: str | None = None


def declared_fields(cls: type) -> dict[str, Any]:
    """The type hints of a settings dataclass's fields, annotations kept, by field name."""
    hints = get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def defaults(cls: type) -> dict[str, Any]:
    """The declared defaults of ``cls`` as plain containers; fields without one are left out."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            values[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return values


def closest(name: str, candidates: Iterable[str]) -> list[str]:
    """Up to three of ``candidates`` that look like ``name`` (a likely misspelling), best
    first; those that match clearly worse than the best one are left out."""
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    if not matches:
        return []
    best = difflib.SequenceMatcher(None, name, matches[0]).ratio()
    return [m for m in matches if difflib.SequenceMatcher(None, name, m).ratio() >= best - 0.1]


def check_settings(value: Any, declaration: Any, key: str = "") -> list[str]:
    """Every problem of ``value`` against ``declaration`` (a settings dataclass or any type
    this module understands), each a line naming the dotted key and the value; [] if none."""
    problems: list[str] = []
    _check(value, declaration, key, problems)
    return problems


def _check(value: Any, hint: Any, key: str, problems: list[str]) -> None:
    if value is UNCHECKED or hint is Any:
        return
    if dataclasses.is_dataclass(hint):
        _check_fields(value, hint, key, problems)
        return
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        _check_annotated(value, args[0], args[1:], key, problems)
    elif origin in (Union, types.UnionType):
        _check_union(value, args, key, problems)
    elif origin is Literal:
        if value not in args:
            _choice_problem(value, [str(a) for a in args], key, problems)
    elif origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}={_show(value)}: expected a list")
            return
        item = args[0] if args else Any
        for index, element in enumerate(value):
            _check(element, item, f"{key}[{index}]", problems)
    elif origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{key}={_show(value)}: expected a mapping")
            return
        item = args[1] if len(args) == 2 else Any
        for name, element in value.items():
            _check(element, item, _join(key, str(name)), problems)
    elif not _is_instance(value, hint):
        problems.append(f"{key}={_show(value)}: expected {_type_name(hint)}")


def _check_fields(value: Any, cls: type, key: str, problems: list[str]) -> None:
    if not isinstance(value, Mapping):
        problems.append(f"{key}={_show(value)}: expected a mapping of {cls.__name__} settings")
        return
    fields = declared_fields(cls)
    for name, element in value.items():
        if name not in fields:
            hint = closest(str(name), fields)
            suggestion = f"; did you mean {' or '.join(map(_join_key(key), hint))}?" if hint else ""
            known = f" (known: {', '.join(sorted(fields))})" if not hint else ""
            problems.append(f"{_join(key, str(name))}: unknown setting{suggestion}{known}")
        else:
            _check(element, fields[name], _join(key, str(name)), problems)


def _check_annotated(
    value: Any, base: Any, marks: tuple[Any, ...], key: str, problems: list[str]
) -> None:
    for mark in marks:
        if isinstance(mark, Choices):
            if not isinstance(value, str) or value not in mark.values():
                if value is None and _allows_none(base):
                    return
                _choice_problem(value, mark.values(), key, problems)
                return
        elif isinstance(mark, OneOf):
            _check_one_of(value, mark, key, problems)
            return
    _check(value, base, key, problems)


def _check_one_of(value: Any, mark: OneOf, key: str, problems: list[str]) -> None:
    if not isinstance(value, Mapping):
        problems.append(f"{key}={_show(value)}: expected a mapping")
        return
    choice = value.get(mark.key, mark.default)
    if choice is UNCHECKED:
        return
    rest = {name: element for name, element in value.items() if name != mark.key}
    if choice is None:  # declared by whichever option fits (e.g. inherited from elsewhere)
        attempts = [check_settings(rest, option, key) for option in mark.options.values()]
        if all(attempts):
            problems.extend(min(attempts, key=len))
        return
    if choice not in mark.options:
        _choice_problem(choice, list(mark.options), _join(key, mark.key), problems)
        return
    _check(rest, mark.options[choice], key, problems)


def _check_union(value: Any, options: tuple[Any, ...], key: str, problems: list[str]) -> None:
    attempts = []
    for option in options:
        found = check_settings(value, option, key)
        if not found:
            return
        if value is None or option is not type(None):
            attempts.append((option, found))
    structured = [found for option, found in attempts if _is_structured(option)]
    if isinstance(value, Mapping) and structured:
        problems.extend(min(structured, key=len))  # the closest declaration's problems
    else:
        expected = " or ".join(_type_name(option) for option in options)
        problems.append(f"{key}={_show(value)}: expected {expected}")


def _is_structured(hint: Any) -> bool:
    return dataclasses.is_dataclass(hint) or get_origin(hint) is Annotated


def _choice_problem(value: Any, choices: list[str], key: str, problems: list[str]) -> None:
    hint = closest(str(value), choices)
    suggestion = f"; did you mean {' or '.join(hint)}?" if hint else ""
    problems.append(f"{key}={_show(value)}: not one of {', '.join(map(str, choices))}{suggestion}")


def _allows_none(hint: Any) -> bool:
    return hint is type(None) or (
        get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
    )


def _is_instance(value: Any, hint: Any) -> bool:
    if hint is type(None) or hint is None:
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    raise TypeError(f"settings declarations cannot use the type {hint!r}")


def _type_name(hint: Any) -> str:
    if hint is type(None) or hint is None:
        return "null"
    origin = get_origin(hint)
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if origin is Literal:
        return " or ".join(map(repr, get_args(hint)))
    if origin is Annotated:
        return _type_name(get_args(hint)[0])
    names = {int: "an int", float: "a number", bool: "true or false", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _join_key(key: str) -> Callable[[str], str]:
    return lambda name: _join(key, name)
