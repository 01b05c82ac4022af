"""Many rows of one table, each with its own values, updated in one `executemany`.

The hot writes of a crowd of replies (titles at the first send, checkpoints of the text so
far, final writes) set different values on each row. The ORM's `bulk_update` builds a
CASE expression per field and row, which cost more CPU than all the rest of a batch of
sends; one statement with placeholders, run for every row by the database driver, costs
a few microseconds a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.db import connection
from django.db.models import Field, Model


def update_rows(
    model: type[Model],
    fields: Sequence[str],
    rows: Iterable[tuple[Any, ...]],
    *,
    by: str = "pk",
    only_if: Mapping[str, Any] | None = None,
) -> None:
    """`UPDATE table SET field = value, ... WHERE key = ...` for each row of `rows`, given
    as (value for each of `fields`..., key), the key being the field `by` names. `only_if`
    adds conditions that every row must meet to be updated (`{"status": "streaming"}`)."""
    meta = model._meta
    pk = _field(model, meta.pk.name if by == "pk" and meta.pk else by)
    setting = [_field(model, name) for name in fields]
    conditions = [(_field(model, name), value) for name, value in (only_if or {}).items()]
    quote = connection.ops.quote_name
    sql = " ".join(
        [
            f"UPDATE {quote(meta.db_table)}",
            "SET " + ", ".join(f"{quote(field.column)} = %s" for field in setting),
            f"WHERE {quote(pk.column)} = %s",
            *(f"AND {quote(field.column)} = %s" for field, _ in conditions),
        ]
    )
    # Each value as the ORM would write it: UUIDs, datetimes and the rest per backend.
    columns = [*setting, pk]
    fixed = [field.get_db_prep_save(value, connection) for field, value in conditions]
    params = [
        [
            field.get_db_prep_save(value, connection)
            for field, value in zip(columns, row, strict=True)
        ]
        + fixed
        for row in rows
    ]
    if params:
        with connection.cursor() as cursor:
            cursor.executemany(sql, params)


def _field(model: type[Model], name: str) -> Field[Any, Any]:
    field = model._meta.get_field(name)
    assert isinstance(field, Field), f"{name} is not a column of {model.__name__}"
    return field
