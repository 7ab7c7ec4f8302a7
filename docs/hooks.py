"""MkDocs hooks: the benchmark report with its plots; and the CLI reference, generated from cas's own parser into
``docs/cli.md`` (committed, so it reads on GitHub too): ``python docs/hooks.py`` writes it again, and the suite
fails while the committed text is not what the parser says."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def on_files(files: Files, config: object) -> Files:
    """The report's plots, served beside it."""
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File(png.name, str(RESULTS), config["site_dir"], config["use_directory_urls"]))  # type: ignore[index]
    return files


def on_page_markdown(markdown: str, page: object, config: object, files: Files) -> str:
    if "<!-- benchmark report -->" in markdown:
        report = (RESULTS / "report.md").read_text()
        return markdown.replace("<!-- benchmark report -->", report.split("\n", 1)[1])  # its own title dropped
    return markdown


CLI_PAGE = REPO / "docs" / "cli.md"
CLI_START, CLI_END = "<!-- cli reference: python docs/hooks.py writes what follows -->", "<!-- end of cli reference -->"


def cli_page() -> str:
    """``docs/cli.md`` with the reference between its markers as the parser has it now."""
    page = CLI_PAGE.read_text()
    head, rest = page.split(CLI_START, 1)
    return f"{head}{CLI_START}\n\n{cli_reference()}\n{CLI_END}{rest.split(CLI_END, 1)[1]}"


PLAIN = {"COLUMNS": "100", "PYTHON_COLORS": "0", "NO_COLOR": "1"}  # argparse wraps to the terminal, and colours


def cli_reference() -> str:
    """Every command with its usage and options, from the parser `cas` itself runs: plain text 100 columns wide,
    wherever it is generated."""
    from cas.cli import build_parser

    saved = {k: os.environ.get(k) for k in PLAIN}
    os.environ.update(PLAIN)
    try:
        return _reference(build_parser())
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def _reference(parser: argparse.ArgumentParser) -> str:
    out = ["```text", parser.format_help().rstrip(), "```", ""]
    for prog, command in _commands(parser, "cas"):
        out += [f"## `{prog}`", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def _commands(parser: argparse.ArgumentParser, prog: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command below ``parser``, named as typed (``cas trust init``), each before its own subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                command.prog = f"{prog} {name}"
                yield command.prog, command
                yield from _commands(command, command.prog)


if __name__ == "__main__":
    CLI_PAGE.write_text(cli_page())
