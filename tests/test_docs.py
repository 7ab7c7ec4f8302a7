"""The documentation site builds in strict mode: a broken link, anchor or reference fails the suite."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import REPO, require


def test_the_docs_build_in_strict_mode(tmp_path):
    require("mkdocs")
    require("material")
    require("mkdocstrings")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "cas checkout" in cli and "--include" in cli  # generated from the parser
    assert 'id="cas.Cache"' in (tmp_path / "site" / "api" / "index.html").read_text()  # from the docstrings


def test_the_committed_cli_reference_is_what_the_parser_says():
    """docs/cli.md carries the reference in the repository (GitHub shows it unbuilt): every command the parser
    has, and no other, each with every option it takes. Compared by content, not byte for byte: argparse lays
    help out a little differently from one Python to the next."""
    import argparse
    import re

    from cas.cli import build_parser

    def commands(parser: argparse.ArgumentParser, prog: str) -> dict[str, argparse.ArgumentParser]:
        found = {}
        for sub in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
            for name, command in sub.choices.items():
                found |= {f"{prog} {name}": command, **commands(command, f"{prog} {name}")}
        return found

    page = (REPO / "docs" / "cli.md").read_text()
    stale = "docs/cli.md is stale: run 'python docs/hooks.py'"
    sections = dict(part.split("`", 1) for part in page.split("\n## `")[1:])
    parsed = commands(build_parser(), "cas")
    assert "cas trust init" in parsed and sorted(sections) == sorted(parsed), stale
    for prog, command in parsed.items():
        for option in (o for action in command._actions for o in action.option_strings):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", sections[prog]), f"{stale} ({prog} {option})"


def test_every_environment_variable_cas_reads_is_on_the_configuration_page():
    import re

    page = (REPO / "docs" / "configuration.md").read_text()
    read = set()
    for path in [*(REPO / "cas").rglob("*.py"), *(REPO / "descriptor").rglob("*.py")]:
        read |= set(re.findall(r"[\"'](CAS_[A-Z_]+)[\"']", path.read_text()))
    assert read and not {v for v in read if f"`{v}" not in page}, sorted(v for v in read if f"`{v}" not in page)
