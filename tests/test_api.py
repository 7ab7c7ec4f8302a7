"""The public surface: what ``cas`` and ``descriptor`` export is exactly what they expose, and cheap to import."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import cas
import descriptor

from .conftest import REPO


def public_names(module: types.ModuleType, defined_in: str) -> set[str]:
    """The public classes and functions a module offers that are defined in ``defined_in`` (a module or package)."""
    return {n for n, v in vars(module).items() if not n.startswith("_") and isinstance(v, (type, types.FunctionType))
            and (v.__module__ == defined_in or v.__module__.startswith(defined_in + "."))}  # fmt: skip


def test_cas_exports_exactly_what_it_defines_and_every_name_resolves():
    for name in cas.__all__:
        assert getattr(cas, name) is not None, name
    assert public_names(cas, "cas") <= set(cas.__all__)
    for error in ("CasError", "NotFound", "InvalidTag", "InvalidInput", "InvalidManifest", "CorruptObject",
                  "CacheBusy", "CacheNotWritable", "RepoError"):  # fmt: skip
        assert issubclass(getattr(cas, error), cas.CasError)


def test_descriptor_exports_exactly_what_it_defines():
    assert set(descriptor.__all__) == public_names(descriptor, "descriptor")


def test_importing_cas_loads_no_repository_code():
    code = "import sys, cas; print(sorted(m for m in sys.modules if m.startswith(('asyncio', 'aiohttp', 'zstandard'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


MODULE_FUNCTIONS = """
import os, sys, cas
model = sys.argv[1]
os.makedirs(model)
open(os.path.join(model, "w.bin"), "wb").write(os.urandom(100_000))
url = "file://" + sys.argv[2]
cas.add(model, "m:v1")
for _ in range(2):  # the first call imports the push and pull modules: cas.push must stay the function
    cas.push("m:v1", url)
os.environ["CAS_HOME"] = sys.argv[3]
for _ in range(2):
    cas.pull("m:v1", url)
print(callable(cas.push), callable(cas.pull), [i.tag for i in cas.list()])
"""


def test_the_module_functions_stay_functions_after_a_push_and_a_pull(tmp_path):
    env = {**os.environ, "CAS_HOME": str(tmp_path / "a")}
    args = [str(tmp_path / "model"), str(tmp_path / "repo"), str(tmp_path / "b")]
    out = subprocess.run([sys.executable, "-c", MODULE_FUNCTIONS, *args], env=env, capture_output=True, text=True,
                         cwd=REPO)  # fmt: skip
    assert out.stdout.split("\n")[0] == "True True ['m:v1']", out.stderr
