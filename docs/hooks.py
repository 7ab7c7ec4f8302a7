"""MkDocs hooks: the CLI reference generated from cas's own parser, and the benchmark report with its plots."""

from __future__ import annotations

import argparse
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
    if "<!-- cli reference -->" in markdown:
        return markdown.replace("<!-- cli reference -->", cli_reference())
    if "<!-- benchmark report -->" in markdown:
        report = (RESULTS / "report.md").read_text()
        return markdown.replace("<!-- benchmark report -->", report.split("\n", 1)[1])  # its own title dropped
    return markdown


def cli_reference() -> str:
    """Every command with its usage and options, from the parser `cas` itself runs."""
    from cas.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = ["```text", parser.format_help().rstrip(), "```", ""]
    for name, command in sub.choices.items():
        command.prog = f"cas {name}"
        out += [f"## `cas {name}`", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(out)
