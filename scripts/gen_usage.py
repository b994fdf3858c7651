"""Regenerate the option tables of docs/usage.md (``--check``: fail if one is stale).

The training table comes from :mod:`imgcls.config`, one table per subcommand from the
dataclasses of :mod:`imgcls.options`; each sits between its own marker comments.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from pathlib import Path

from imgcls.config import flag_of, iter_options
from imgcls.options import COMMANDS

DOC = Path(__file__).resolve().parents[1] / "docs" / "usage.md"
START, END = "<!-- options:start -->", "<!-- options:end -->"


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _meaning(f: dataclasses.Field) -> str:
    return f.metadata["help"].replace("|", "\\|")


def option_table() -> str:
    """The training options: flag, config.yaml key, default, meaning."""
    lines = ["| flag | config key | default | meaning |", "| --- | --- | --- | --- |"]
    for section, f in iter_options():
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if f.metadata.get("cli") is False:
            flag = "DATA" if f.name == "path" else "(config only)"
        key = f"{section}.{f.name}" if section else f.name
        lines.append(f"| `{flag}` | `{key}` | `{_default(f)}` | {_meaning(f)} |")
    return "\n".join(lines)


def command_fields(cls: type):
    """The fields of a subcommand's options that are arguments, sections flattened, in CLI order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from command_fields(hints[f.name])
        elif f.metadata.get("cli") is not False:
            yield f


def command_table(cls: type) -> str:
    """One subcommand's arguments: flag (or positional), default, meaning."""
    lines = ["| argument | default | meaning |", "| --- | --- | --- |"]
    for f in command_fields(cls):
        default = _default(f)
        shown = "required" if default is dataclasses.MISSING else f"`{default}`"
        lines.append(f"| `{flag_of(f)}` | {shown} | {_meaning(f)} |")
    return "\n".join(lines)


def markers(command: str) -> tuple[str, str]:
    slug = command.replace(" ", "-")
    return f"<!-- options:{slug}:start -->", f"<!-- options:{slug}:end -->"


def render(text: str) -> str:
    """``text`` with every table between its markers regenerated; a missing marker is an error."""
    tables = {(START, END): option_table()}
    tables.update({markers(name): command_table(cls) for name, cls in COMMANDS.items()})
    for (start, end), table in tables.items():
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise SystemExit(f"docs/usage.md has no {start} ... {end} section")
        text = pattern.sub(lambda _: f"{start}\n{table}\n{end}", text)
    return text


if __name__ == "__main__":
    current = DOC.read_text()
    fresh = render(current)
    if "--check" in sys.argv:
        sys.exit(0 if fresh == current else "docs/usage.md is stale: run python scripts/gen_usage.py")
    DOC.write_text(fresh)
