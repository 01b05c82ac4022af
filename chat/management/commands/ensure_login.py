"""Make sure a staff login exists for a first run, and print it."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Create the development login (a superuser) unless it exists, and print it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument(
            "--password-file",
            default=str(Path(settings.BASE_DIR) / ".dev-login"),
            help="Where the generated password is kept, readable by you only.",
        )

    def handle(self, *args: Any, username: str, password_file: str, **options: Any) -> None:
        users = get_user_model()
        saved = Path(password_file)
        if users.objects.filter(username=username).exists():
            password = saved.read_text().strip() if saved.exists() else None
            shown = password or f"(set it with: manage.py changepassword {username})"
            self.stdout.write(f"Log in as {username!r} with password {shown}")
            return
        password = secrets.token_urlsafe(12)
        users.objects.create_superuser(username, password=password)
        saved.touch(mode=0o600)
        saved.write_text(password + "\n")
        self.stdout.write(
            self.style.SUCCESS(f"Created login {username!r} with password {password}")
        )
        self.stdout.write(f"(kept in {saved})")
