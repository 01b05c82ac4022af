"""Trigram indexes for `chat.search.matching`, on PostgreSQL only.

Django's `icontains` on PostgreSQL is `UPPER(col::text) LIKE UPPER('%text%')`, so the
indexes are on `UPPER(col)` with `gin_trgm_ops`: a substring search anywhere in a message
then reads the index, not the whole table. They are built CONCURRENTLY (hence not atomic),
so a live table keeps taking writes meanwhile. SQLite has no such index; there this
migration does nothing.

The indexes stay out of the models' Meta (and of the migration state), because SQLite
cannot build them: `makemigrations` sees no change on either backend.
"""

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

# (index, table, column)
INDEXES = [
    ("message_content_trgm", "chat_message", "content"),
    ("conversation_title_trgm", "chat_conversation", "title"),
]


def create_indexes(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    # pg_trgm is a trusted extension (PostgreSQL 13+): a database owner may create it.
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for name, table, column in INDEXES:
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} "
            f"ON {table} USING gin (UPPER({column}) gin_trgm_ops)"
        )


def drop_indexes(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, _, _ in INDEXES:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    # The extension stays: something else may have come to use it.


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("chat", "0003_api_token"),
    ]

    operations = [
        migrations.RunPython(create_indexes, drop_indexes, elidable=False),
    ]
