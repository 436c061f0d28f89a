"""Create the demo groups and one login per role (idempotent; passwords are reset each time)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand

#: username -> (password, groups, permissions, is_staff, is_superuser, role)
USERS = {
    "alice": ("alice-demo", [], [], False, False, "employee: submits expenses"),
    "bob": ("bob-demo", ["managers"], [], False, False, "manager: approves or rejects"),
    "carol": ("carol-demo", ["finance"], [], False, False, "finance: approves large amounts"),
    "dave": ("dave-demo", [], ["expenses.approve_escalated"], False, False, "director: escalated approvals"),
    "operator": ("operator-demo", [], ["durable_django.view_durableinstance", "durable_django.resume_durableinstance",
                                       "durable_django.cancel_durableinstance", "durable_django.publish_durableevent",
                                       "durable_django.edit_locals_durableinstance"], True, False,
                 "operator: the durable instances admin"),
    "admin": ("admin-demo", [], [], True, True, "superuser"),
}


def _perm(label: str) -> Permission:
    app_label, codename = label.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


class Command(BaseCommand):
    help = "Create demo users for the expense example (alice, bob, carol, dave, operator, admin)."

    def handle(self, *args, **options) -> None:
        User = get_user_model()
        for username, (password, groups, perms, staff, superuser, role) in USERS.items():
            user, _ = User.objects.get_or_create(username=username)
            user.is_staff, user.is_superuser = staff, superuser
            user.set_password(password)
            user.save()
            user.groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
            user.user_permissions.set([_perm(p) for p in perms])
            self.stdout.write(f"  {username:9} / {password:14} {role}")
