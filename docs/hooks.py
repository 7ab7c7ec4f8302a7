"""MkDocs hooks: the benchmark report with its plots; and the CLI reference, generated from cas's own parser into
``docs/cli.md`` (committed, so it reads on GitHub too): ``python docs/hooks.py`` writes it again, and the suite
fails while the committed text is not what the parser says."""

from __future__ import annotations

import argparse
import os
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
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = ["```text", parser.format_help().rstrip(), "```", ""]
    for name, command in sub.choices.items():
        command.prog = f"cas {name}"
        out += [f"## `cas {name}`", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    CLI_PAGE.write_text(cli_page())
