"""Rewrite the settings table in docs/configuration.md from roomcast.config.

.venv/bin/python scripts/config_table.py
"""

from __future__ import annotations

from pathlib import Path

from roomcast.config import describe

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
HEAD = "|---|---|---|---|\n"
END = "<!-- end settings-table -->"


def main() -> None:
    text = DOC.read_text()
    rows = "".join(f"| `{f}` | `{e}` | `{d}` | {h} |\n" for f, e, d, h in describe())
    start = text.index(HEAD, text.index("<!-- settings-table")) + len(HEAD)
    DOC.write_text(text[:start] + rows + text[text.index(END) :])


if __name__ == "__main__":
    main()
