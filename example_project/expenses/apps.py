from django.apps import AppConfig


class ExpensesConfig(AppConfig):
    """The example business process: expense approval (see durable_programs.py)."""

    name = "example_project.expenses"
    label = "expenses"
    verbose_name = "Expenses"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import receivers

        receivers.connect()
