from django.apps import AppConfig


class ExpensesConfig(AppConfig):
    """The example business process: expense approval (see durable_programs.py)."""

    name = "example_project.expenses"
    label = "expenses"
    verbose_name = "Expenses"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import flow_control, receivers  # noqa: F401  (flow_control declares the process's limits)

        receivers.connect()
