"""Create the demo groups and one login per role (idempotent; passwords are reset each time).

The logins have published passwords, one of them a superuser: the command
refuses to run unless the database is clearly a demo database (see
:func:`refuse_unless_demo`).
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

#: The flag that lets the demo commands write their logins into a database that does not look like a demo's.
FORCE_FLAG = "--i-know-this-is-a-demo"


def demo_database_reason() -> str:
    """Why the default database looks like a demo database ("" if it does not): DEBUG is on, or it is a SQLite
    file inside the project's var directory (``DURABLE_VAR_DIR``)."""
    if settings.DEBUG:
        return "DEBUG is on"
    db = connection.settings_dict
    var_dir = getattr(settings, "VAR_DIR", None)
    if "sqlite" in db["ENGINE"] and var_dir is not None and str(db["NAME"]) != ":memory:":
        name, var_dir = Path(db["NAME"]).resolve(), Path(var_dir).resolve()
        if name.is_relative_to(var_dir):
            return f"SQLite in {var_dir}"
    return ""


def refuse_unless_demo(force: bool) -> None:
    """Raise CommandError unless the database is clearly a demo's, or ``force`` (the flag) was given."""
    if force or demo_database_reason():
        return
    db = connection.settings_dict
    raise CommandError(
        f"Refusing to create the demo logins (a superuser admin/admin-demo and others with published passwords) "
        f"in database {db['NAME']!r} ({db['ENGINE']}): DEBUG is off and it is not a SQLite file in the project's "
        f"var directory, so it may be a production database. Run with {FORCE_FLAG} if it is a demo.")

#: username -> (password, groups, permissions, is_staff, is_superuser, role)
USERS = {
    "alice": ("alice-demo", [], [], False, False, "employee: submits expenses"),
    "bob": ("bob-demo", ["managers"], [], False, False, "manager: approves or rejects"),
    "carol": ("carol-demo", ["finance"], [], False, False, "finance: approves large amounts"),
    "dave": ("dave-demo", [], ["expenses.approve_escalated"], False, False, "director: escalated approvals"),
    "operator": ("operator-demo", [], ["durable_django.view_durableinstance", "durable_django.resume_durableinstance",
                                       "durable_django.cancel_durableinstance", "durable_django.publish_durableevent",
                                       "durable_django.edit_locals_durableinstance",
                                       # the schedules' admin: see, pause and resume the weekly reminder
                                       "durable_django.view_durableschedule", "durable_django.change_durableschedule"],
                 True, False,
                 "operator: the durable instances admin"),
    "admin": ("admin-demo", [], [], True, True, "superuser"),
}


def _perm(label: str) -> Permission:
    app_label, codename = label.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


class Command(BaseCommand):
    help = "Create demo users for the expense example (alice, bob, carol, dave, operator, admin)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(FORCE_FLAG, dest="force", action="store_true",
                            help="Create them even though DEBUG is off and the database is not the demo's SQLite.")

    def handle(self, *args, force: bool = False, **options) -> None:
        refuse_unless_demo(force)
        User = get_user_model()
        for username, (password, groups, perms, staff, superuser, role) in USERS.items():
            user, _ = User.objects.get_or_create(username=username)
            user.is_staff, user.is_superuser = staff, superuser
            user.set_password(password)
            user.save()
            user.groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
            user.user_permissions.set([_perm(p) for p in perms])
            self.stdout.write(f"  {username:9} / {password:14} {role}")
