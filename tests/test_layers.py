"""The structure check (``python -m tests.support.layers``) passes on cas, and catches what it is for."""

from __future__ import annotations

from pathlib import Path

from .support import layers


def test_cas_has_no_import_circle_no_reach_into_private_names_and_respects_its_layers():
    assert layers.problems() == []


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_check_finds_circles_reaches_and_imports_against_the_layers(tmp_path):
    root = write(tmp_path, {
        "cas/__init__.py": "",
        "cas/content/tree.py": "from .codec import encode\n",  # content <-> content, through a lazy import below
        "cas/content/codec.py": "def encode():\n    from . import tree\n",
        "cas/local/__init__.py": "",
        "cas/local/cache.py": "from ..sync.pull import pull\n",  # local cache importing sync: against the layers
        "cas/sync/pull.py": "from ..local.cache import _helper\n\ndef pull(c):\n    return c._blob_path\n",
        "descriptor/__init__.py": "import cas\n",
    })  # fmt: skip
    found = layers.problems(root)
    assert "import circle: cas.content.codec <-> cas.content.tree" in found
    assert "import circle: cas.local.cache <-> cas.sync.pull" in found
    assert any("imports _helper from cas.local.cache" in p for p in found)
    assert any("uses c._blob_path" in p for p in found)
    assert any(p.startswith("cas.local.cache (local cache) imports cas.sync.pull (sync)") for p in found)


def test_the_architecture_page_s_layout_table_names_every_module():
    page = (layers.ROOT / "docs" / "architecture.md").read_text()
    table = page[page.index("## Layout of the code") :]
    for name, path in layers.modules().items():
        if path.name in ("__init__.py", "__main__.py") and name != "cas":
            continue
        shown = path.relative_to(layers.ROOT).as_posix() if name.startswith("cas") else "descriptor/"
        assert f"`{shown}`" in table, f"docs/architecture.md's layout table does not name {shown}"
