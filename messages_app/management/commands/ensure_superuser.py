from __future__ import annotations

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = (
        "Create a superuser with the password in DJANGO_SUPERUSER_PASSWORD unless one with that "
        "name exists, and print its API token. Used by `make run` for the local setup."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options) -> None:
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
            if not password:
                raise CommandError("set DJANGO_SUPERUSER_PASSWORD to create the superuser")
            user = User.objects.create_superuser(username=username, email="", password=password)
            self.stdout.write(f"Created superuser {username!r}.")
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(f"API token for {username!r}: {token.key}")
