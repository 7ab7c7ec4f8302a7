"""Scenario 15, where models land: selections, checkouts into any folder, and seeds from local folders.

- Selection: a model laid out like a multi-variant hub repository (fp32 and fp16 safetensors, a
  ``pytorch_model.bin``, an ONNX export, an ``original/`` checkpoint, tokenizer and config files),
  pushed to a folder served by a static server that counts the bytes it serves
  (``benchmarks.countingserver``).  ``cas pull --include '*.json' model.fp16.safetensors`` against the
  selected files' compressed bytes in the repository (goal: at most 2% more) and against the whole
  model; ``huggingface_hub``'s ``snapshot_download(allow_patterns=...)`` of the same files from a local
  stand-in for the Hub (``benchmarks.fakehub``).
- Time to a served fp16 variant on a cold host: ``cas materialize --include`` against the whole model's
  ``cas materialize`` (whole processes, interleaved, fresh hosts).
- Checkout: ``cas checkout`` of v2 (a 10% fine-tune, a new tokenizer, a file gone) over a checkout of v1,
  against ``dvc checkout`` of the same v2 over v1 in a DVC workspace: time and files rewritten (inodes).
- Materialize: 10,000 files of 1-64 KiB (1,000 in quick mode) whose blobs are stored, whole and half of them
  (``--include 'folder-0*/'``), against ``cp -rl`` of the same files.  Each timed command starts after the
  previous one's output is removed and a ``sync``, and the order alternates: the old loop timed ``cp -rl``
  right after ``cas materialize`` and right after ``rm -rf`` of its previous copy (10,000 unlinks of the
  very inodes it links again), with nothing flushed in between.
- Seeds: a host holding v1 as a plain folder outside any cache gets v2 with ``cas pull --seed``, against a
  host holding v1 in its cache and against ``casync extract --seed`` (Debian's casync, its store on the same
  counting server): bytes served and time.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from benchmarks.harness import met, reset, summary, wall, wall_cpu
from cas import Cache
from cas.content.selection import Selection
from tests.support import synth
from tests.support.procs import free_port, start, stop

FP16 = ["*.json", "model.fp16.safetensors"]
DVC = str(Path(sys.executable).parent / "dvc")


class Counting:
    """A counting static server over a folder (``benchmarks.countingserver``)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = start(
            [sys.executable, "-m", "benchmarks.countingserver", str(folder), str(port)], self.url + "/_stats"
        )

    def served(self) -> int:
        return json.loads(urllib.request.urlopen(self.url + "/_stats").read())["bytes"]

    def stop(self) -> None:
        stop(self.proc)


def run(work: Path, quick: bool) -> dict:
    runs = 1 if quick else 3
    out: dict = {}
    servers: list[Counting] = []
    try:
        out["selection"] = _selection(work, (8 if quick else 128) << 20, runs, servers)
        out["checkout"] = _checkout(work, (16 if quick else 256) << 20, runs)
        out["seeds"] = _seeds(work, (16 if quick else 256) << 20, servers)
        out["materialize"] = _materialize(work, quick)
    finally:
        for s in servers:
            s.stop()
        for d in ("land-model", "land-repo", "land-src", "land-hosts", "land-hf", "land-co", "land-seed", "land-small"):
            reset(work / d)
    return out


# -- selections -------------------------------------------------------------------------------------------


def _selection(work: Path, size: int, runs: int, servers: list[Counting]) -> dict:
    model = synth.write_variant_repo(work / "land-model", 61, size)
    src = Cache(work / "land-src", durable=False)
    src.add(model, "m:v1")
    src.push("m:v1", f"file://{work / 'land-repo'}")
    server = Counting(work / "land-repo")
    servers.append(server)
    tree, sel = src.tree("m:v1"), Selection.of(FP16)
    chosen = sel.files(tree, "m:v1")  # type: ignore[union-attr]
    est = Cache(work / "land-hosts" / "estimate")
    selected_encoded = est.estimate_pull("m:v1", server.url, include=FP16).bytes_to_fetch
    whole_encoded = est.estimate_pull("m:v1", server.url).bytes_to_fetch
    sel_s, whole_s, moved = [], [], []
    for i in range(runs):  # interleaved, each on a fresh host
        before = server.served()
        sel_s.append(_timed_cas(work / "land-hosts" / f"sel-{i}", "materialize", "m:v1", "--remote", server.url,
                                "--include", *FP16))  # fmt: skip
        moved.append(server.served() - before)
        whole_s.append(_timed_cas(work / "land-hosts" / f"whole-{i}", "materialize", "m:v1", "--remote", server.url))
    hf = _hf(work, model, runs)
    return {"model_bytes": tree.size, "selected_raw": sum(f.size for f in chosen), "selected_files": len(chosen),
            "selected_encoded": selected_encoded, "whole_encoded": whole_encoded, "moved": max(moved),
            "cas_s": summary(sel_s), "whole_s": summary(whole_s), "hf": hf}  # fmt: skip


def _timed_cas(home: Path, *args: str) -> float:
    subprocess.run(["sync"], check=True)
    env = {**os.environ, "CAS_HOME": str(home), "CAS_DURABLE": "0"}
    return wall_cpu([sys.executable, "-m", "cas", *args], env)[0]


HF_PULL = """
import sys
from huggingface_hub import snapshot_download
snapshot_download("bench/model", allow_patterns=sys.argv[1:])
"""


def _hf(work: Path, model: Path, runs: int) -> dict | None:
    """``snapshot_download(allow_patterns=FP16)`` from a local stand-in for the Hub: bytes it served, time."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start([sys.executable, "-m", "benchmarks.fakehub", str(model), str(port)], url + "/_stats")
    try:
        seconds = []
        for i in range(runs):
            env = {**os.environ, "HF_ENDPOINT": url, "HF_HOME": str(work / "land-hf" / str(i)),
                   "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip
            subprocess.run(["sync"], check=True)
            seconds.append(wall_cpu([sys.executable, "-c", HF_PULL, *FP16], env)[0])
        served = json.loads(urllib.request.urlopen(url + "/_stats").read())
    finally:
        stop(proc)
    return {"s": summary(seconds), "bytes": served["bytes"] // runs, "files": served["files"] // runs}


# -- checkouts --------------------------------------------------------------------------------------------


def _versions(work: Path, size: int) -> tuple[Path, Path]:
    """v1: weights, config, a README and a vocabulary; v2: 10% of the tensors changed, a new tokenizer, no README."""
    base = synth.model_tensors(71, size, layer_bytes=4 << 20)
    v1 = synth.write_model_dir(work / "land-co" / "v1", base)
    (v1 / "README.md").write_text("v1\n")
    (v1 / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(30000)))
    v2 = synth.write_model_dir(work / "land-co" / "v2", synth.fine_tune(base, 0.10, seed=72))
    (v2 / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(30000)))
    (v2 / "tokenizer.json").write_text('{"v": 2}')
    return v1, v2


def _checkout(work: Path, size: int, runs: int) -> dict:
    v1, v2 = _versions(work, size)
    home = work / "land-co" / "cache"
    cache = Cache(home, durable=False)
    cache.add(v1, "m:v1")
    cache.add(v2, "m:v2")
    ours, rewritten = [], 0
    for i in range(runs):
        dest = work / "land-co" / f"cas-{i}"
        cache.checkout("m:v1", dest)
        before = _inodes(dest)
        ours.append(_timed_cas(home, "checkout", "m:v2", str(dest)))
        rewritten = _rewritten(before, _inodes(dest))
    dvc = _dvc_checkout(work, v1, v2, runs) if Path(DVC).exists() else None
    return {"model_bytes": sum(p.stat().st_size for p in v2.rglob("*") if p.is_file()),
            "cas_s": summary(ours), "cas_rewritten": rewritten, "dvc": dvc}  # fmt: skip


def _inodes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_ino for p in folder.rglob("*")
            if p.is_file() and not p.relative_to(folder).as_posix().startswith((".cas/", ".dvc/"))
            and not p.name.endswith(".dvc")}  # fmt: skip


def _rewritten(before: dict[str, int], after: dict[str, int]) -> int:
    """Files written anew (a new inode, or new), and files removed."""
    return sum(before.get(p) != ino for p, ino in after.items()) + len(set(before) - set(after))


def _dvc_checkout(work: Path, v1: Path, v2: Path, runs: int) -> dict:
    """A DVC workspace with v1's and v2's ``.dvc`` files: ``dvc checkout`` of v2 over a checkout of v1."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    ws = work / "land-co" / "dvc"
    ws.mkdir()

    def dvc(args: str) -> float:
        subprocess.run(["sync"], check=True)
        return wall_cpu(["sh", "-c", f"cd {shlex.quote(str(ws))} && {shlex.quote(DVC)} {args}"], env)[0]

    dvc("init -q --no-scm")
    for name, folder in (("v1", v1), ("v2", v2)):
        reset(ws / "model")
        shutil.copytree(folder, ws / "model")
        dvc("add -q model")
        shutil.copy(ws / "model.dvc", ws / f"{name}.dvc.keep")
    seconds, rewritten = [], 0
    for _ in range(runs):
        shutil.copy(ws / "v1.dvc.keep", ws / "model.dvc")
        dvc("checkout -q --force model.dvc")
        before = _inodes(ws / "model")
        shutil.copy(ws / "v2.dvc.keep", ws / "model.dvc")
        seconds.append(dvc("checkout -q model.dvc"))
        rewritten = _rewritten(before, _inodes(ws / "model"))
    return {"s": summary(seconds), "rewritten": rewritten}


# -- seeds ------------------------------------------------------------------------------------------------


def _seeds(work: Path, size: int, servers: list[Counting]) -> dict:
    base = synth.model_tensors(81, size, layer_bytes=4 << 20)
    d = work / "land-seed"
    v1 = synth.write_model_dir(d / "v1", base)
    v2 = synth.write_model_dir(d / "v2", synth.fine_tune(base, 0.10, seed=82))
    src = Cache(d / "src", durable=False)
    for tag, folder in (("m:v1", v1), ("m:v2", v2)):
        src.add(folder, tag)
        src.push(tag, f"file://{d / 'pub' / 'cas'}")
    server = Counting(d / "pub")
    servers.append(server)
    url = f"{server.url}/cas"
    out = {"model_bytes": src.get("m:v2").size}
    cached = d / "cached"
    _timed_cas(cached, "pull", "m:v1", "--remote", url)
    out["cache"] = _served(server, lambda: _timed_cas(cached, "pull", "m:v2", "--remote", url))
    out["seed"] = _served(server, lambda: _timed_cas(d / "seeded", "pull", "m:v2", "--remote", url, "--seed", str(v1)))
    out["cold"] = _served(server, lambda: _timed_cas(d / "cold", "pull", "m:v2", "--remote", url))
    out["casync"] = _casync(d, v1, v2, server) if shutil.which("casync") else None
    return out


def _served(server: Counting, step) -> dict:  # type: ignore[no-untyped-def]
    before = server.served()
    seconds = step()
    return {"s": seconds, "bytes": server.served() - before}


def _casync(d: Path, v1: Path, v2: Path, server: Counting) -> dict:
    """casync's store on the same counting server: ``casync extract --seed=v1 v2.caidx`` over HTTP."""
    store = d / "pub" / "casync.castr"
    for name, folder in (("v1", v1), ("v2", v2)):
        subprocess.run(["casync", "make", f"--store={store}", str(d / f"{name}.caidx"), str(folder)], check=True,
                       capture_output=True)  # fmt: skip
    cmd = ["casync", "extract", f"--store={server.url}/casync.castr", f"--seed={v1}", str(d / "v2.caidx"),
           str(d / "casync-out")]  # fmt: skip

    def extract() -> float:
        subprocess.run(["sync"], check=True)
        return wall_cpu(cmd)[0]

    return _served(server, extract)


# -- materialize ------------------------------------------------------------------------------------------


def _small_files(path: Path, count: int, seed: int = 14) -> int:
    """``count`` files of 1-64 KiB of random bytes in 20 folders; returns their total size."""
    rng = random.Random(seed)
    total = 0
    for i in range(count):
        d = path / f"folder-{i % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(1 << 10, 64 << 10))
        (d / f"file-{i:05d}.bin").write_bytes(data)
        total += len(data)
    return total


def _materialize(work: Path, quick: bool) -> dict:
    """``cas materialize`` of many small files whose blobs are stored (no snapshot yet), whole and half of them,
    against ``cp -rl`` of the same files; alternate order, each command after a removal and a ``sync``."""
    count, runs = (1000, 3) if quick else (10_000, 9)
    d = work / "land-small"
    model, home = d / "model", d / "home"
    size = _small_files(model, count)
    Cache(home, durable=False).add(model, "many:v1")
    env = {**os.environ, "CAS_HOME": str(home)}
    half = [str(p) for p in sorted(model.glob("folder-0*"))]
    cases = {
        "whole": ([sys.executable, "-m", "cas", "materialize", "many:v1"], ["cp", "-rl", str(model), str(d / "cp")]),
        "partial": ([sys.executable, "-m", "cas", "materialize", "many:v1", "--include", "folder-0*/"],
                    ["sh", "-c", f"mkdir {d / 'cp'} && cp -rl {' '.join(half)} {d / 'cp'}"]),
    }  # fmt: skip
    out: dict = {"files": count, "bytes": size}
    for case, (cas_cmd, cp_cmd) in cases.items():
        ours, theirs = [], []
        for i in range(runs + 1):  # the first round warms the caches and is not counted
            steps = [("cas", cas_cmd), ("cp", cp_cmd)]
            for who, cmd in steps if i % 2 else reversed(steps):
                reset(home / "snapshots")
                reset(d / "cp")
                os.sync()
                seconds = wall(cmd, env)[0]
                if i:
                    (ours if who == "cas" else theirs).append(seconds)
        out[case] = {"cas_s": summary(ours), "cp_rl_s": summary(theirs)}
    out["partial"]["files"] = sum(1 for p in half for _ in Path(p).iterdir())
    return out


# -- how the report shows it ------------------------------------------------------------------------------


def headline_rows(f: dict) -> list[tuple[str, str, str, str, str]]:
    s, c, sd, m = f["selection"], f["checkout"], f["seeds"], f["materialize"]
    over = s["moved"] / s["selected_encoded"] - 1
    rows = [
        *(_materialize_row(m, case) for case in ("whole", "partial")),
        ("`pull --include '*.json' model.fp16.safetensors` of a multi-variant model: bytes moved",
         _mb(s["moved"]), f"the selected files' compressed bytes {_mb(s['selected_encoded'])}; whole model "
         f"{_mb(s['whole_encoded'])}", f"+{over:.1%}", f"≤ +2%: {met(over <= 0.02)}"),
        ("time to a served fp16 variant on a cold host", _spread(s["cas_s"]), f"whole model {_spread(s['whole_s'])}",
         f"{s['whole_s']['median'] / s['cas_s']['median']:.2f}x", "-"),
    ]  # fmt: skip
    if s.get("hf"):
        rows.append(("the same selection with `huggingface_hub` `allow_patterns`", _mb(s["moved"]),
                     f"`snapshot_download` {_mb(s['hf']['bytes'])} in {s['hf']['s']['median']:.2f} s",
                     f"{s['hf']['bytes'] / s['moved']:.2f}x the bytes", "-"))  # fmt: skip
    if c.get("dvc"):
        rows.append(("`cas checkout` v2 over v1 (10% fine-tune)", f"{_spread(c['cas_s'])}, {c['cas_rewritten']} files",
                     f"`dvc checkout` {_spread(c['dvc']['s'])}, {c['dvc']['rewritten']} files",
                     f"{c['dvc']['s']['median'] / c['cas_s']['median']:.2f}x", "-"))  # fmt: skip
    rows.append(("a host holding v1 as a plain folder gets v2 (`--seed`): bytes moved", _mb(sd["seed"]["bytes"]),
                 f"a host holding v1 in its cache {_mb(sd['cache']['bytes'])}",
                 f"{sd['seed']['bytes'] / max(1, sd['cache']['bytes']):.2f}x",
                 f"the same ~8%: {met(sd['seed']['bytes'] <= 1.1 * sd['cache']['bytes'])}"))  # fmt: skip
    if sd.get("casync"):
        rows.append(("seeded pull of v2 vs `casync extract --seed`", f"{_mb(sd['seed']['bytes'])} in "
                     f"{sd['seed']['s']:.2f} s", f"casync {_mb(sd['casync']['bytes'])} in {sd['casync']['s']:.2f} s",
                     f"{sd['casync']['s'] / sd['seed']['s']:.2f}x", "-"))  # fmt: skip
    return rows


def _materialize_row(m: dict, case: str) -> tuple[str, str, str, str, str]:
    c = m[case]
    ratio = c["cp_rl_s"]["median"] / c["cas_s"]["median"]
    files = m["files"] if case == "whole" else m[case]["files"]
    what = f"`cas materialize` {files:,} small files{', a selection of half' if case == 'partial' else ''}"
    return (f"{what}, blobs present", _spread(c["cas_s"], "{:.3f}"), "`cp -rl` " + _spread(c["cp_rl_s"], "{:.3f}"),
            f"{ratio:.2f}x", f"≥ 0.5x: {met(ratio >= 0.5)}")  # fmt: skip


def section(f: dict) -> str:
    s, c, sd = f["selection"], f["checkout"], f["seeds"]
    hf = s.get("hf")
    hf_text = (f" `huggingface_hub`'s `snapshot_download(allow_patterns=...)` of the same files from a local stand-in "
               f"for the Hub moved {_mb(hf['bytes'])} ({hf['files']} whole files, uncompressed) in "
               f"{_spread(hf['s'])}." if hf else "")  # fmt: skip
    dvc = c.get("dvc")
    dvc_text = (f" `dvc checkout` of the same v2 over v1 took {_spread(dvc['s'])} and rewrote {dvc['rewritten']} "
                "files." if dvc else " DVC is not installed: no `dvc checkout` figure.")  # fmt: skip
    ca = sd.get("casync")
    ca_text = (f" `casync extract --seed` of v2 from its store on the same server moved {_mb(ca['bytes'])} in "
               f"{ca['s']:.2f} s." if ca else " casync is not installed: no `casync` figure.")  # fmt: skip
    return (
        "## 15. Where models land: selections, checkouts, seeds\n\n"
        f"**Selection.** A {_mb(s['model_bytes'])} model laid out like a multi-variant hub repository (fp32 and "
        "fp16 safetensors, `pytorch_model.bin`, an ONNX export, `original/`, tokenizer and config files), pushed to a "
        "folder behind a byte-counting static server. `cas materialize --include '*.json' model.fp16.safetensors` on "
        f"a cold host moved {_mb(s['moved'])} for {s['selected_files']} files ({_mb(s['selected_raw'])} raw, "
        f"{_mb(s['selected_encoded'])} compressed in the repository), in {_spread(s['cas_s'])}; the whole model is "
        f"{_mb(s['whole_encoded'])} compressed and took {_spread(s['whole_s'])}.{hf_text}\n\n"
        f"**Checkout.** `cas checkout` of v2 (10% of the tensors changed, a new tokenizer, a file gone) over a "
        f"checkout of v1, {_mb(c['model_bytes'])}: {_spread(c['cas_s'])}, {c['cas_rewritten']} files written or "
        f"removed.{dvc_text}\n\n"
        f"**Seeds.** v2 of a {_mb(sd['model_bytes'])} model, from a static server counting bytes: a host holding v1 "
        f"in its cache moved {_mb(sd['cache']['bytes'])} ({sd['cache']['s']:.2f} s); a host holding v1 only as a "
        f"plain folder, with `--seed`, {_mb(sd['seed']['bytes'])} ({sd['seed']['s']:.2f} s); a cold host "
        f"{_mb(sd['cold']['bytes'])} ({sd['cold']['s']:.2f} s).{ca_text}\n\n"
        f"**Materialize.** {f['materialize']['files']:,} files of 1-64 KiB ({_mb(f['materialize']['bytes'])}) whose "
        "blobs are stored, as a whole `cas materialize` process against `cp -rl` of the same files; each command "
        "after the previous one's output is removed and a `sync`, in alternating order (min / median / max): "
        + "; ".join(
            f"{case} {_spread(f['materialize'][case]['cas_s'], '{:.3f}')} against `cp -rl` "
            f"{_spread(f['materialize'][case]['cp_rl_s'], '{:.3f}')}"
            for case in ("whole", "partial")
        )
        + "."
    )


def _spread(s: dict, fmt: str = "{:.2f}") -> str:
    if s["n"] == 1:
        return f"{fmt.format(s['median'])} s"
    return f"{fmt.format(s['min'])} / {fmt.format(s['median'])} / {fmt.format(s['max'])} s"


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"
