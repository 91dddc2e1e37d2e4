"""The docs tell the truth about the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

from roomcast.config import describe
from roomcast.core.errors import CloseCode, ErrorCode
from roomcast.core.protocol import COMMAND_TYPES

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_table_matches_settings() -> None:
    """docs/configuration.md lists every setting with its variable and default."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text.split("<!-- settings-table")[1].split("<!-- end settings-table -->")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    expected = [f"| `{f}` | `{e}` | `{d}` | {h} |" for f, e, d, h in describe()]
    assert rows == expected, "run scripts/config_table.py"


def test_protocol_doc_lists_every_code_and_message() -> None:
    """docs/protocol.md documents every error code, close code and client message."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    for code in ErrorCode:
        assert f"| `{code.value}` |" in text, code
    for close in CloseCode:
        assert f"| {close.value} |" in text, close
    for kind in COMMAND_TYPES:
        assert re.search(rf"### `{kind} |\| `{kind}` \|", text), kind


def test_readme_commands_are_the_ci_commands() -> None:
    """The README's test command is the one .ci/run runs."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = re.search(r"```sh\n(python3 -m venv .*pytest.*)\n```", readme)
    assert test_cmd is not None
    assert test_cmd.group(1) in ci
