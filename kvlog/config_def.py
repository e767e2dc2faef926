"""Configuration tables in the shape of Kafka's ``ConfigDef``: one declaration per setting.

A :class:`ConfigKey` holds everything about one setting: its name (Kafka's dotted name),
its type (how a value is spelled, checked and documented), its default, its doc and, for
broker settings, the processes that use it. A :class:`ConfigDef` is an ordered table of
them: it checks what users give (native values or their string spellings, as from a CLI or
a file), names the closest valid name for an unknown one, fills in defaults, and renders
itself as a Markdown table.

Every kvlog setting lives in one such table: broker (``kvlog/workers/config.py``), topic
(``kvlog/topic_config.py``), producer, consumer and admin (``kvlog/ipc/config.py``).
``docs/CONFIG.md`` is generated from them (``kvlog config docs``).
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidConfigError

Parse = Callable[[str, Any], Any]


@dataclass(frozen=True)
class ConfigType:
    """How a setting's value is spelled and checked. ``parse(name, value)`` returns the
    typed value or raises InvalidConfigError naming the setting; ``name`` and ``valid``
    document it (Kafka's "Type" and "Valid Values")."""

    name: str
    parse: Parse
    valid: str = ""


def integer(
    low: int | None = None, high: int | None = None, *, valid: str | None = None
) -> ConfigType:
    """An int, or a string spelling one; within [low, high] where given. ``valid`` says
    the legal values in the docs when the bounds alone do not say it well."""

    def parse(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise InvalidConfigError(f"{name} must be an integer, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise InvalidConfigError(f"{name} must be an integer, got {value!r}") from None
        if high is not None and low is not None and not low <= number <= high:
            raise InvalidConfigError(f"{name}={number} is outside {low}..{high}")
        if low is not None and number < low:
            raise InvalidConfigError(f"{name}={number} is too small; it must be >= {low}")
        return number

    if valid is None:
        if low is not None and high is not None:
            valid = f"{low}..{high}"
        else:
            valid = "" if low is None else f">= {low}"
    return ConfigType("int", parse, valid)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidConfigError(f"{name} must be true or false, got {value!r}")


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidConfigError(f"{name} must be a string, got {value!r}")
    return value


def _string_list(name: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        raise InvalidConfigError(f"{name} must be a list of strings, got {value!r}")
    return list(items)


BOOLEAN = ConfigType("boolean", _boolean, "true, false")
STRING = ConfigType("string", _string)
STRING_LIST = ConfigType("list", _string_list)


def one_of(*choices: str, fold_case: bool = True) -> ConfigType:
    """A string from ``choices`` (lower-cased first unless ``fold_case`` is False)."""

    def parse(name: str, value: Any) -> str:
        spelled = value.lower() if fold_case and isinstance(value, str) else value
        if spelled not in choices:
            raise InvalidConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return str(spelled)

    return ConfigType("string", parse, ", ".join(choices))


def optional(inner: ConfigType) -> ConfigType:
    """``inner`` or None (null)."""

    def parse(name: str, value: Any) -> Any:
        return None if value is None else inner.parse(name, value)

    return ConfigType(inner.name, parse, f"{inner.valid}, or null" if inner.valid else "")


@dataclass(frozen=True)
class ConfigKey:
    """One setting. ``used_by`` (broker settings) names the processes that read it and
    ``field`` the name they know it by, when that is not :attr:`attr`."""

    name: str
    type: ConfigType
    default: Any
    doc: str
    used_by: tuple[str, ...] = ()
    field: str = ""

    @property
    def attr(self) -> str:
        """The snake_case spelling (Python keyword arguments)."""
        return self.name.replace(".", "_")

    def parse(self, value: Any) -> Any:
        return self.type.parse(self.name, value)


class ConfigDef(Mapping[str, ConfigKey]):
    """An ordered, immutable table of settings: name -> :class:`ConfigKey`.

    ``what`` names the table in errors ("broker config"); with ``snake_case`` a setting
    may also be given by its snake_case spelling (keyword arguments)."""

    def __init__(self, what: str, keys: Iterable[ConfigKey], *, snake_case: bool = True) -> None:
        self.what = what
        self.snake_case = snake_case
        self._keys: dict[str, ConfigKey] = {}
        for key in keys:
            if key.name in self._keys:
                raise ValueError(f"{what}: {key.name} is declared twice")
            self._keys[key.name] = key
        self._by_attr = {key.attr: key for key in self._keys.values()} if snake_case else {}

    def __getitem__(self, name: str) -> ConfigKey:
        return self._keys[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, spelled: str) -> ConfigKey | None:
        """The key for a dotted name or, with ``snake_case``, its snake_case spelling."""
        found = self._keys.get(spelled)
        if found is None and self.snake_case:
            found = self._by_attr.get(spelled) or self._keys.get(spelled.replace("_", "."))
        return found

    def unknown(self, spelled: str) -> InvalidConfigError:
        """The error for a name not in the table, naming the closest valid one."""
        return unknown_name_error(spelled, [*self._keys, *self._by_attr], self.what)

    def default(self, name: str) -> Any:
        return self._keys[name].default

    def defaults(self) -> dict[str, Any]:
        """Every setting's default, by dotted name."""
        return {name: key.default for name, key in self._keys.items()}

    def parse(self, values: Mapping[str, Any] | None) -> dict[str, Any]:
        """The given settings checked and typed, by dotted name; raises
        InvalidConfigError naming the first bad name or value."""
        out: dict[str, Any] = {}
        for spelled, value in (values or {}).items():
            key = self.lookup(spelled)
            if key is None:
                raise self.unknown(spelled)
            out[key.name] = key.parse(value)
        return out

    def complete(self, values: Mapping[str, Any] | None) -> dict[str, Any]:
        """Every setting by dotted name: the defaults, with the given ones checked over them."""
        return self.defaults() | self.parse(values)

    def markdown(self, *, used_by: bool = False) -> str:
        """A Markdown table of every setting: name, type, default, valid values, (the
        processes that use it,) doc."""
        head = ["name", "type", "default", "valid values", *(["used by"] if used_by else []), "doc"]
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for key in self._keys.values():
            cells = [
                f"`{key.name}`",
                key.type.name,
                format_default(key),
                key.type.valid,
                *([", ".join(key.used_by)] if used_by else []),
                key.doc,
            ]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        return "\n".join(lines) + "\n"


def unknown_name_error(name: str, known: Iterable[str], what: str) -> InvalidConfigError:
    """``unknown <what> 'name'`` with the closest known name, or the list of them."""
    names = list(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = (
        f"; did you mean {close[0]!r}?" if close else f"; known names: {', '.join(sorted(names))}"
    )
    return InvalidConfigError(f"unknown {what} {name!r}{hint}")


_MIB = 1 << 20
_DURATIONS = ((86_400_000, "days", "day"), (3_600_000, "h", "h"), (60_000, "min", "min"))


def format_default(key: ConfigKey) -> str:
    """A default as the docs show it: Kafka's spellings, with a readable size or duration."""
    value = key.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.name).lower()
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    if isinstance(value, int) and value > 0:
        if key.name.endswith(".bytes") and value >= _MIB and value % _MIB == 0:
            return f"{value} ({value // _MIB} MiB)"
        if key.name.endswith(".ms"):
            for unit, plural, single in _DURATIONS:
                if value >= unit and value % unit == 0:
                    count = value // unit
                    return f"{value} ({count} {plural if count != 1 else single})"
    return str(value)
