"""Our own database refusing writes, for the tests of what a failed step costs: a trigger
on a table (the messages', unless told) that raises when its condition holds, on SQLite
and PostgreSQL."""

from __future__ import annotations

from django.db import connection


def refuse(event: str, when: str = "1 = 1", table: str = "chat_message") -> None:
    """Make the database refuse `event` (INSERT, UPDATE) of a row of `table` while `when`
    holds (SQL over NEW)."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                f"CREATE TRIGGER refuse BEFORE {event} ON {table} WHEN {when} "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        else:
            cursor.execute(
                "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER refuse BEFORE {event} ON {table} FOR EACH ROW "
                f"WHEN ({when}) EXECUTE FUNCTION refuse()"
            )


def allow(table: str = "chat_message") -> None:
    """Drop the trigger `refuse` made."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("DROP TRIGGER IF EXISTS refuse")
        else:
            cursor.execute(f"DROP TRIGGER IF EXISTS refuse ON {table}")
