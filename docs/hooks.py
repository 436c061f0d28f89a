"""MkDocs hooks: reference tables generated from the code, so they can never go stale.

A page asks for a table with a marker comment on a line of its own, e.g.
``<!-- generated: settings -->``. The generators read the code itself:
``durable_django/conf.py``'s ``DEFAULTS`` (values and the comment above each
key), ``durable_django/checks.py`` (every ``Error``/``Warning`` with its id),
the management commands' argument parsers, and the hot statements that
``durable_django/db/`` builds.
"""

from __future__ import annotations

import ast
import io
import os
import pkgutil
import re
import sys
import tokenize
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)


def _django() -> None:
    """A minimal Django configuration: enough to import the app's models and commands (no database is opened)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "durable_django"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            USE_TZ=True,
        )
        django.setup()


def _comments(source: str) -> dict[int, str]:
    """Comment text by line number."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def settings_table() -> str:
    """The ``DURABLE`` settings: a section per key of ``DEFAULTS``, its default and the comment that documents it."""
    _django()
    from durable_django.conf import DEFAULTS

    source = (ROOT / "durable_django" / "conf.py").read_text()
    comments = _comments(source)
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.AnnAssign | ast.Assign)
                and "DEFAULTS" in ast.unparse(n.target if isinstance(n, ast.AnnAssign) else n.targets[0]))
    assert isinstance(node.value, ast.Dict)
    out = []
    previous = ""
    for key, value in zip(node.value.keys, node.value.values, strict=True):
        assert isinstance(key, ast.Constant)
        lines = []
        line = key.lineno - 1
        while line in comments:
            lines.insert(0, comments[line])
            line -= 1
        meaning = " ".join(lines) or previous
        previous = meaning
        default = f"`{DEFAULTS[key.value]!r}`"
        if not isinstance(value, ast.Constant):
            default += f" (`{ast.unparse(value)}`)"
        out.append(f"### `{key.value}`\n\nDefault: {default}\n\n{' '.join(meaning.split())}\n")
    return "\n".join(out)


def _field(value: ast.FormattedValue) -> str:
    """An f-string field as the reader sees it: ``{name}`` for a variable, "..." for an expression."""
    return f"`{{{value.value.id}}}`" if isinstance(value.value, ast.Name) else "..."


def _text(node: ast.expr | None) -> str:
    """A message as written: f-string fields shown as ``{expression}``."""
    if node is None:
        return ""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else _field(v)
                       for v in node.values if isinstance(v, ast.Constant | ast.FormattedValue))
    if isinstance(node, ast.IfExp):
        return _text(node.body)
    return ast.unparse(node)


def checks_table() -> str:
    """Every system check the app registers: a section per id with its level, messages and hints (``checks.py``)."""
    tree = ast.parse((ROOT / "durable_django" / "checks.py").read_text())
    found: dict[str, list[tuple[str, str, str]]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        if node.func.id not in ("Error", "Warning"):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        ident = _text(kw.get("id"))
        entry = (node.func.id, _text(node.args[0] if node.args else None), _text(kw.get("hint")))
        if entry not in found.setdefault(ident, []):
            found[ident].append(entry)
    out = []
    for ident in sorted(found, key=lambda i: (i.split(".")[1][0] != "E", i)):
        out.append(f"### `{ident}`\n\n{found[ident][0][0]}.\n")
        for _level, message, hint in found[ident]:
            out.append(f"* {message}" + (f"<br>*Hint:* {hint}" if hint else ""))
        out.append("")
    return "\n".join(out)


def commands_reference() -> str:
    """Each management command's help text and arguments, from its own argument parser."""
    _django()
    from django.core.management import load_command_class

    import durable_django.management.commands as commands

    os.environ["COLUMNS"] = "100"
    common = {"version", "verbosity", "settings", "pythonpath", "traceback", "no_color", "force_color",
              "skip_checks"}
    out = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        command = load_command_class("durable_django", info.name)
        parser = command.create_parser("manage.py", info.name)
        # Django's common options (--settings, --traceback, ...) are the same for every command: left out.
        for action in [a for a in parser._actions if a.dest in common]:
            parser._remove_action(action)
            for group in parser._action_groups:
                if action in group._group_actions:
                    group._group_actions.remove(action)
        parser.description = None
        out.append(f"## `{info.name}`\n\n{command.help}\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    return "\n".join(out)


def checkpoint_sql() -> str:
    """The hot statements ``durable_django/db/`` builds, on PostgreSQL: the checkpoint (two cases), the claim
    and ``publish_event``."""
    _django()
    from durable_django.db import operations, postgresql

    def qn(name: str) -> str:
        return f'"{name}"'

    def pretty(sql: str) -> str:
        for old, new in ((" SET ", "\n   SET "), (" WHERE ", "\n WHERE "), (" RETURNING ", "\n RETURNING "),
                         (", c AS (", ",\nc AS ("), (", h AS (", ",\nh AS ("), (", e AS (", ",\ne AS ("),
                         (", claimed AS (", ",\nclaimed AS ("), (" SELECT count(*)", "\nSELECT count(*)"),
                         (" SELECT x.", "\nSELECT x."), (" FROM u, ", "\n  FROM u, "), (") SELECT ", ")\nSELECT ")):
            sql = sql.replace(old, new)
        return sql

    cases = [
        ("The running checkpoint", "The usual one: only non-indexed columns change. The same on every database.",
         operations.checkpoint_update(qn, ("state", "steps", "position", "updated_at"))),
        ("A checkpoint that pauses", "It consumed one event and pauses again: on PostgreSQL the status, the wait, "
         "the consumed event and the history entry go in one statement.",
         postgresql._checkpoint_sql(qn, ("state", "steps", "position", "status", "wait_kind", "waiting_for",
                                         "updated_at"), 1, 1)),
        ("The claim", "A batch of free instances, claimed outside a transaction (PostgreSQL).",
         postgresql._claim_batch_sql(qn, detached=True)),
        ("publish_event", "Without an idempotency key (PostgreSQL).", postgresql._publish_sql(qn, "integer")),
    ]
    return "\n".join(f"### {title}\n\n{text}\n\n```sql\n{pretty(sql)}\n```\n" for title, text, sql in cases)


GENERATORS: dict[str, Callable[[], str]] = {
    "settings": settings_table,
    "checks": checks_table,
    "commands": commands_reference,
    "checkpoint-sql": checkpoint_sql,
}


def on_page_markdown(markdown: str, **kwargs) -> str:
    """Replace each ``<!-- generated: NAME -->`` line with what its generator renders."""
    return MARKER.sub(lambda m: GENERATORS[m.group(1)](), markdown)


ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):<code>(~?)([^<]*)</code>")


def _role(match: re.Match) -> str:
    name = match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if match.group(1) else name}</code>"


def on_page_content(html: str, **kwargs) -> str:
    """Docstrings use Sphinx roles (``:class:`X```); the rendered page shows just the name, as code."""
    return ROLE.sub(_role, html)
