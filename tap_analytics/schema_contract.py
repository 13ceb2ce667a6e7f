"""A stream's schema contract: what happens to fields its schema does not have.

The API sends more than the documents list, and adds fields over time (API.md,
"Records carry more than the source documents list"). Schema-driven targets
(target-postgres, target-duckdb) load only the properties a SCHEMA message names,
so without a contract such a field is silently dropped. The modes are dlt's:

- ``evolve`` (default): a field outside the schema joins it, typed from its first
  value that is not null (``string``, ``integer``, ``number``, ``boolean``,
  ``object``, ``array``, always nullable; a date-time stays a string, so that a
  later value that is not one cannot fail a load), and the caller announces the
  grown schema before the record. A later value of that field that does not fit
  the type announced goes to a variant field ``<name>__v_<type>``, named after
  the JSON Schema type of the value (``score__v_string``), with one WARNING per
  stream and variant field: a target cannot change a column's type, and a value
  that does not fit it would fail the load or be lost.
- ``freeze``: a field outside the schema, or a value that fits neither the type
  an earlier run gave a field nor a variant field of its own, ends the run with
  one line naming the stream and the field.
- ``discard_value``: such fields and values are dropped from the records.

The fields earlier runs typed (kept in the state, see below) are part of the
schema in every mode, their variant fields included.

A field whose value is null adds nothing (no type to announce, nothing to load):
it is dropped from the record in every mode until it has a value, as dlt creates
no column for a field that has only been null. The contract knows it as null so
far (``null_fields``), so the records that carry it pass the quick check; its
first value that is not null fails it, and the field is then added as any other.

Documented fields keep their documented types and are not checked: checking every
field of every record would cost more than the whole contract may (a set
comparison per record, plus a type check of each field the tap typed itself). A
value that breaks a documented type is sent as the API sent it; a target that
validates records (target-postgres does) rejects it and the run fails, with every
STATE before it intact.

The types given in a run are kept in the stream's state (``STATE_KEY``), so the
next run announces the same columns with the same types from its first SCHEMA on,
even when its first value of a field has another type.
"""

from __future__ import annotations

import enum
import logging
import typing as t

from tap_analytics.errors import TapAnalyticsError

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

Schema = dict[str, t.Any]
Record = dict[str, t.Any]

#: Where a stream's state keeps the fields this tap typed: ``{name: json type}``.
STATE_KEY = "inferred_properties"


class ContractMode(enum.StrEnum):
    """The ``schema_contract`` setting: dlt's names for its contract modes."""

    EVOLVE = "evolve"
    FREEZE = "freeze"
    DISCARD_VALUE = "discard_value"


class SchemaContractError(TapAnalyticsError):
    """A record broke the ``freeze`` contract, or the state names an unknown type."""


# Keyed by the exact type: a bool is an int in Python, not in JSON.
_JSON_TYPES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
}
#: The Python types a JSON decoder gives for values that fit each JSON type
#: (null fits every field the tap types: they are all nullable).
_FITS: dict[str, frozenset[type]] = {
    "string": frozenset({str, type(None)}),
    "integer": frozenset({int, type(None)}),
    "number": frozenset({int, float, type(None)}),
    "boolean": frozenset({bool, type(None)}),
    "object": frozenset({dict, type(None)}),
    "array": frozenset({list, type(None)}),
}
#: What fits a field known as null so far: null only.
_NULL_ONLY: frozenset[type] = frozenset({type(None)})


def json_type(value: t.Any) -> str:
    """The JSON Schema type of a decoded JSON value (not null)."""
    # Records come from a JSON decoder; anything else would be written as text.
    return _JSON_TYPES.get(type(value), "string")


def property_schema(type_name: str) -> Schema:
    """The schema of a field the tap typed: nullable, since other records lack it."""
    return {"type": [type_name, "null"]}


class SchemaContract:
    """The contract of one stream's records with the schema it announced.

    Every record goes through a quick check, which the record writer
    (``AnalyticsStream._write_record_message``) runs inline, as a call per record
    would cost a sixth more: a record fits as it is when ``covers(record)`` and
    ``type(record.get(name)) in types`` for each ``(name, types)`` of ``typed``,
    and then only loses its ``null_fields``. Any other record goes to
    :meth:`apply`. The three attributes are made anew when the contract learns a
    field (``_refresh``).
    """

    def __init__(
        self,
        stream: str,
        mode: ContractMode,
        fields: Iterable[str],
        logger: logging.Logger,
    ) -> None:
        """``fields``: what a record may carry as is (announced or deselected)."""
        self.stream = stream
        self.mode = mode
        self._logger = logger
        self._known = set(fields)
        self._json_types: dict[str, str] = {}  # each field this tap typed: its type
        # Fields outside the schema that have only been null so far (dict: ordered).
        self._nulls: dict[str, None] = {}
        self._reported: set[str] = set()
        self._refresh()

    @property
    def typed_fields(self) -> dict[str, str]:
        """The fields this tap typed and their JSON types, to keep in the state."""
        return dict(self._json_types)

    def restore(self, typed: Mapping[str, t.Any]) -> dict[str, Schema]:
        """Take back the fields an earlier run typed; returns what the schema gains."""
        grown: dict[str, Schema] = {}
        for name, type_name in typed.items():
            if type_name not in _FITS:
                msg = (
                    f"stream '{self.stream}': the state's {STATE_KEY} gives field "
                    f"'{name}' the type {type_name!r}, not one of {', '.join(_FITS)}"
                )
                raise SchemaContractError(msg)
            if name not in self._known:  # documented since: documented wins
                grown[name] = self._add(name, type_name)
        return grown

    def apply(self, record: Record) -> dict[str, Schema] | None:
        """Make ``record`` fit the contract, in place: the slow path.

        Returns the properties the schema must gain before this record is
        written, or None when it has not changed. The record writer calls it only
        for a record that fails the quick check (see the class); one that passes
        would only lose its ``null_fields`` here too.
        """
        grown: dict[str, Schema] = {}
        for name in [name for name in record if name not in self._known]:
            value = record[name]
            if value is None:  # nothing to type or load (nor to refuse) yet
                if name not in self._nulls:
                    self._nulls[name] = None
                    self._refresh()
                del record[name]
                continue
            if self.mode is not ContractMode.EVOLVE:
                self._refuse(name, "is not in the schema", value)
                del record[name]
                continue
            grown[name] = self._add(name, json_type(value))
            # The run's last lines list every field added (RunStats): DEBUG here.
            self._logger.debug(
                "Stream '%s': new field '%s' (%s) added to the schema",
                self.stream,
                name,
                self._json_types[name],
            )
        for name, type_name in list(self._json_types.items()):
            value = record.get(name)
            if type(value) in _FITS[type_name]:
                continue
            value_type = json_type(value)
            del record[name]
            variant = self._variant_of(name, value_type, record)
            if variant not in self._json_types:  # a new field: the schema would change
                if self.mode is not ContractMode.EVOLVE:
                    self._refuse(
                        name, f"is {self._json_types[name]}, got {value_type}", value
                    )
                    continue
                grown[variant] = self._add(variant, value_type)
            record[variant] = value
            self._report(
                variant,
                logging.WARNING,
                f"field '{name}' is {self._json_types[name]} in the schema: its "
                f"{value_type} values go to '{variant}'",
            )
        return grown or None

    def _refuse(self, name: str, problem: str, value: t.Any) -> None:
        """A field or value (never null) the contract keeps out."""
        if self.mode is ContractMode.FREEZE:
            msg = (
                f"stream '{self.stream}': field '{name}' {problem} "
                "(schema_contract is freeze)"
            )
            raise SchemaContractError(msg)
        self._report(
            name,
            logging.INFO,
            f"dropping field '{name}': it {problem} (schema_contract is discard_value)",
        )

    def _variant_of(self, name: str, value_type: str, record: dict[str, t.Any]) -> str:
        variant = f"{name}__v_{value_type}"
        # Never a documented field, one of another type, or one the API sent.
        while variant in record or (
            variant in self._known and self._json_types.get(variant) != value_type
        ):
            variant = f"{variant}__v_{value_type}"
        return variant

    def _add(self, name: str, type_name: str) -> Schema:
        self._known.add(name)
        self._nulls.pop(name, None)
        self._json_types[name] = type_name
        self._refresh()
        return property_schema(type_name)

    def _refresh(self) -> None:
        # The quick check (see the class): one set comparison per record, plus a
        # type check per field the tap typed or knows as null so far.
        self.covers = frozenset(self._known.union(self._nulls)).issuperset
        self.typed: tuple[tuple[str, frozenset[type]], ...] = (
            *((name, _FITS[json]) for name, json in self._json_types.items()),
            *((name, _NULL_ONLY) for name in self._nulls),
        )
        #: Fields known as null so far: in a record that fits, null (nothing to load).
        self.null_fields: tuple[str, ...] = tuple(self._nulls)

    def _report(self, field: str, level: int, message: str) -> None:
        """Log ``message`` once per run for ``field`` (dropped, or a variant)."""
        if field not in self._reported:
            self._reported.add(field)
            self._logger.log(level, "Stream '%s': %s", self.stream, message)
