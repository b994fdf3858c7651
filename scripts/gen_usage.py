"""Regenerate the option table of docs/usage.md from imgcls.config (``--check``: fail if stale)."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from imgcls.config import iter_options

DOC = Path(__file__).resolve().parents[1] / "docs" / "usage.md"
START, END = "<!-- options:start -->", "<!-- options:end -->"


def option_table() -> str:
    lines = ["| flag | config key | default | meaning |", "| --- | --- | --- | --- |"]
    for section, f in iter_options():
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if f.metadata.get("cli") is False:
            flag = "DATA" if f.name == "path" else "(config only)"
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()
        key = f"{section}.{f.name}" if section else f.name
        meaning = f.metadata["help"].replace("|", "\\|")
        lines.append(f"| `{flag}` | `{key}` | `{default}` | {meaning} |")
    return "\n".join(lines)


def render(text: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    return pattern.sub(f"{START}\n{option_table()}\n{END}", text)


if __name__ == "__main__":
    current = DOC.read_text()
    fresh = render(current)
    if "--check" in sys.argv:
        sys.exit(0 if fresh == current else "docs/usage.md is stale: run python scripts/gen_usage.py")
    DOC.write_text(fresh)
