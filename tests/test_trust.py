"""Signed models and a host's trust policy against a hostile repository: TUF's attacks, through real servers.

A publisher sets up signing with the real CLI (``cas trust init``, ``cas
trust delegate``, ``cas push --sign``); the attacker then writes to the
repository (a folder nginx serves, ``cas serve``'s folder, the S3
bucket) as anyone with write access could, and a host with
``CAS_TRUST`` pulls through the real CLI.  Each attack must end in one
line, exit code 1, and nothing of the attacker's published in the host's
cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import blake3
import pytest

import cas
from cas import Cache
from cas.content.ref import decode as decode_ref
from cas.repo.format import trust_role_key, trust_root_key, trust_state_key
from cas.repo.repository import run_with_repository
from cas.sync.exportfile import END, MAGIC
from cas.trust import publish
from cas.trust.documents import Role, RoleMeta, Target, encode_role, encode_state, seal
from cas.trust.keys import SigningKey, generate, load_public
from cas.trust.policy import Anchor, TrustPolicy

from .conftest import REPO, TOKEN, cas_cli, stats

ROLES = {"team-a": "classifier*", "team-b": "ranker*"}

# The attacker's unsigned pushes warn as every unsigned push into a signing repository does (tested on its own).
pytestmark = pytest.mark.filterwarnings("ignore:.*was pushed unsigned:UserWarning")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "keys"
    folder.mkdir()
    for name in ("root", "online", "team-a", "team-b", "team-a-new"):
        generate(folder / f"{name}.key")
    return {p.stem: p for p in folder.glob("*.key")}


def setup_signing(tmp_path: Path, keys: dict[str, Path], url: str, *, cli: bool = False) -> SimpleNamespace:
    """``url`` set up for signing as a platform team would: a root, an online key, a role per team; through
    the CLI (``cas trust init``, ``cas trust delegate``) or, where the setup is not what is tested, in-process."""
    ns = SimpleNamespace(url=url, keys=keys, policy=tmp_path / "policy.json", publisher=tmp_path / "publisher")
    if cli:
        run("trust", "init", url, "--root", keys["root"], "--online", keys["online"], "--policy", ns.policy, home=ns)
        for role, names in ROLES.items():
            run("trust", "delegate", url, role, "--names", names, "--key", f"{keys[role]}.pub", "--sign",
                keys["root"], "--sign", keys["online"], home=ns)  # fmt: skip
        return ns
    root, online = SigningKey.from_file(keys["root"]), SigningKey.from_file(keys["online"])

    async def work(repo):
        anchor = await publish.init(repo, [root], [online.public], online_signers=[online])
        for role, names in ROLES.items():
            await publish.set_role(repo, role, [names], [load_public(f"{keys[role]}.pub")], 1, [root, online])
        return anchor

    with token_set():
        anchor = run_with_repository(work, url)
    ns.policy.write_text(TrustPolicy((Anchor(url, anchor),)).to_json())
    return ns


@contextlib.contextmanager
def token_set():
    old = os.environ.get("CAS_TOKEN")
    os.environ["CAS_TOKEN"] = TOKEN
    try:
        yield
    finally:
        if old is None:
            del os.environ["CAS_TOKEN"]
        else:
            os.environ["CAS_TOKEN"] = old


def run(*args: object, home: SimpleNamespace, check: bool = True):
    return cas_cli(*map(str, args), home=home.publisher, check=check, env={**os.environ, "CAS_TOKEN": TOKEN})


def publish_model(ns: SimpleNamespace, tmp_path: Path, tag: str, *signers: str, cli: bool = False) -> str:
    """Add a small model of its own bytes as ``tag`` and push it, signed by ``signers`` (none: unsigned);
    ``cli``: with ``cas add`` and ``cas push --sign`` as a publisher's CI job would."""
    src = tmp_path / "models" / tag.replace(":", "-")
    src.mkdir(parents=True)
    (src / "model.safetensors").write_bytes(os.urandom(200_000))
    (src / "config.json").write_text(f'{{"tag": "{tag}"}}')
    publisher = Cache(ns.publisher)
    if cli:
        run("add", src, tag, home=ns)
        run("push", tag, "--remote", ns.url, *[a for k in signers for a in ("--sign", ns.keys[k])], home=ns)
        return publisher.get(tag).root
    publisher.add(src, tag)
    with token_set():
        publisher.push(tag, ns.url, sign=[SigningKey.from_file(ns.keys[s]) for s in signers])
    return publisher.get(tag).root


def host_pull(ns: SimpleNamespace, home: Path, tag: str, url: str | None = None, **env: str):
    environ = {**os.environ, "CAS_TRUST": str(ns.policy), **env}
    return cas_cli("pull", tag, "--remote", url or ns.url, home=home, check=False, env=environ)


def assert_refused(proc, *words: str, home: Path, root: str | None = None) -> None:
    """One line, exit 1, naming what went wrong; the attacker's model is not in the host's cache."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cas: error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    if root is not None and home.exists():
        assert root not in {i.root for i in Cache(home).list()}
        assert not (home / "trees" / root[:2] / root).exists()


def pulled(home: Path, tag: str) -> str:
    return Cache(home).get(tag).root


# -- the repository: a folder nginx serves, cas serve, S3 --------------------------------------------------------


@pytest.fixture(params=["nginx", "cas serve", "s3", "oci"])
def repository(request, tmp_path) -> SimpleNamespace:
    """Where the publisher writes, where hosts read, and what an attacker with write access writes to."""
    if request.param == "oci":
        url = f"oci://{request.getfixturevalue('registry')()[0].removeprefix('http://')}/team"
        return SimpleNamespace(write=url, read=url)
    if request.param == "s3":
        s3 = request.getfixturevalue("s3")
        return SimpleNamespace(write=s3, read=s3)
    if request.param == "nginx":
        nginx = request.getfixturevalue("nginx")
        folder = tmp_path / "served"
        folder.mkdir()
        return SimpleNamespace(write=f"file://{folder}", read=nginx(folder))
    server = request.getfixturevalue("server")
    return SimpleNamespace(write=server[0], read=server[0])


def test_a_model_no_trusted_key_signed_is_refused_and_latest_is_the_signed_one(tmp_path, keys, repository):
    """Arbitrary model: whoever can write the repository pushes their own classifier:v2, unsigned. A host with a
    policy refuses it by name, and its ``latest`` stays the signed v1 though the listing says v2."""
    ns = setup_signing(tmp_path, keys, repository.write)
    v1 = publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    evil = publish_model(ns, tmp_path, "classifier:v2")  # write access, no key
    host = tmp_path / "host"
    assert_refused(host_pull(ns, host, "classifier:v2", repository.read), "classifier:v2", "not signed",
                   home=host, root=evil)  # fmt: skip
    assert host_pull(ns, host, "classifier:latest", repository.read).returncode == 0
    assert pulled(host, "classifier:latest") == v1
    # without a policy the same host would have taken the attacker's
    plain = cas_cli("pull", "classifier:latest", "--remote", repository.read, home=tmp_path / "plain")
    assert plain.returncode == 0 and pulled(tmp_path / "plain", "classifier:latest") == evil


def test_a_repository_without_signatures_is_refused(tmp_path, keys, nginx):
    ns = setup_signing(tmp_path, keys, f"file://{tmp_path / 'signed'}")
    unsigned = tmp_path / "unsigned"
    ns.url = f"file://{unsigned}"
    root = publish_model(ns, tmp_path, "classifier:v1")
    host = tmp_path / "host"
    assert_refused(host_pull(ns, host, "classifier:v1", nginx(unsigned)), "has no signatures", home=host, root=root)


def test_an_unsigned_push_to_a_repository_set_up_for_signing_warns_that_hosts_will_refuse_it(tmp_path, keys):
    """A publisher who forgets --sign learns it at push time, not from hosts failing; a signed push, an unsigned
    one where nobody signs, or pushing again a version that is there already, says nothing of it."""
    ns = setup_signing(tmp_path, keys, f"file://{tmp_path / 'signed'}")
    publish_model(ns, tmp_path, "classifier:v1", "team-a", "online", cli=True)
    src = tmp_path / "models" / "classifier-v1"
    plain = f"file://{tmp_path / 'plain'}"
    pushes = [("classifier:v2", ns.url, []), ("classifier:v3", ns.url, ["team-a", "online"]),
              ("classifier:v2", plain, []), ("classifier:v2", ns.url, [])]  # fmt: skip
    said = []
    for tag, url, signers in pushes:
        run("add", src, tag, home=ns, check=False)
        said.append(run("push", tag, "--remote", url, *[a for k in signers for a in ("--sign", ns.keys[k])],
                        home=ns).stderr)  # fmt: skip
    assert ["set up for signing" in err for err in said] == [True, False, False, False], said  # v2 again: a no-op
    assert (
        said[0].startswith("cas: warning: ")
        and "classifier:v2 was pushed unsigned: hosts with a trust policy "
        "refuse it until it is signed ('cas sign classifier:v2 --remote URL --sign KEY'"
        in said[0]
    )


def test_the_descriptor_with_a_policy_resolves_only_what_is_signed(tmp_path, keys, server):
    ns = setup_signing(tmp_path, keys, server[0])
    v1 = publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    publish_model(ns, tmp_path, "classifier:v2")
    code = f"""
import descriptor
class Service:
    model = descriptor.Model("classifier:latest", trust={str(ns.policy)!r})
    other = descriptor.Model("classifier:v2", trust={str(ns.policy)!r})
print(Service().model.root)
try:
    Service().other
except Exception as e:
    print(type(e).__name__, e)
"""
    env = {**os.environ, "CAS_HOME": str(tmp_path / "host"), "CAS_REMOTE": server[0]}
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    first, second = out.stdout.strip().splitlines()
    assert first == v1
    assert second.startswith("Untrusted Service.other: ") and "not signed" in second


# -- key not trusted for this name -------------------------------------------------------------------------------


def forge_role(url: str, role: str, targets: dict[str, Target], signers: list[SigningKey], online: Path) -> None:
    """What a holder of ``signers`` and of the online key can publish: a new version of ``role``'s document
    with ``targets`` added, and a state naming it."""

    async def work(repo):
        _, state = await publish.current(repo)
        old = await publish.role(repo, state, role) if role in state.roles else None
        version = (old.version if old else 0) + 1
        doc = Role(role, version, int(time.time()) + 3600, {**(old.targets if old else {}), **targets})
        data = seal("role", encode_role(doc), signers)
        await repo.backend.create(trust_role_key(role, version), data)
        roles = {**state.roles, role: RoleMeta(version, blake3.blake3(data).hexdigest())}
        new_state = state.but(version=state.version + 1, expires=int(time.time()) + 3600, roles=roles)
        signed = seal("state", encode_state(new_state), [SigningKey.from_file(online)])
        await repo.backend.update(trust_state_key(), lambda _: signed)

    run_with_repository(work, url)


def test_a_role_cannot_sign_names_it_was_not_given_nor_another_role(tmp_path, keys, nginx):
    """Team B holds its key and the online key, and signs classifier:v2 (team A's name) in its own role, then
    rewrites team A's document signed with its own key: both refused."""
    folder = tmp_path / "repo"
    ns = setup_signing(tmp_path, keys, f"file://{folder}")
    publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    evil = publish_model(ns, tmp_path, "classifier:v2")
    team_b = SigningKey.from_file(keys["team-b"])
    forge_role(
        ns.url,
        "team-b",
        {"classifier:v2": Target(evil), "classifier:latest": Target(evil, "v2")},
        [team_b],
        keys["online"],
    )
    host, url = tmp_path / "host", nginx(folder)
    assert_refused(host_pull(ns, host, "classifier:v2", url), "not signed", home=host, root=evil)
    forge_role(ns.url, "team-a", {"classifier:v2": Target(evil), "classifier:latest": Target(evil, "v2")}, [team_b],
               keys["online"])  # fmt: skip
    assert_refused(host_pull(ns, host, "classifier:latest", url), "team-a", "signed by 0 of the keys", home=host,
                   root=evil)  # fmt: skip


def test_a_role_needing_two_keys_refuses_a_document_only_one_of_them_signed(tmp_path, keys, nginx):
    """Team A's role needs 2 of its 2 keys: the publisher's CI signs with both and hosts pull; a thief of one
    team key and the online key signs classifier:v2 alone, and hosts refuse it, naming the threshold."""
    folder = tmp_path / "repo"
    ns = setup_signing(tmp_path, keys, f"file://{folder}")
    pair = [load_public(f"{keys[k]}.pub") for k in ("team-a", "team-a-new")]
    signers = [SigningKey.from_file(keys[k]) for k in ("root", "online")]
    run_with_repository(lambda repo: publish.set_role(repo, "team-a", ["classifier*"], pair, 2, signers), ns.url)
    v1 = publish_model(ns, tmp_path, "classifier:v1", "team-a", "team-a-new", "online")
    host, url = tmp_path / "host", nginx(folder)
    assert host_pull(ns, host, "classifier:v1", url).returncode == 0 and pulled(host, "classifier:v1") == v1
    evil = publish_model(ns, tmp_path, "classifier:v2")
    forge_role(ns.url, "team-a", {"classifier:v2": Target(evil), "classifier:latest": Target(evil, "v2")},
               [SigningKey.from_file(keys["team-a"])], keys["online"])  # fmt: skip
    assert_refused(host_pull(ns, host, "classifier:v2", url), "signed by 1 of the keys trusted for it, 2 needed",
                   home=host, root=evil)  # fmt: skip


def test_a_role_document_whose_latest_disagrees_with_the_version_it_names_is_refused(tmp_path, keys, nginx):
    """Team A's own document says latest is v2 with one root, and v2 with another (a publishing bug, or two
    jobs' edits mixed): neither root is taken, whichever the ref of v2 names."""
    folder = tmp_path / "repo"
    ns = setup_signing(tmp_path, keys, f"file://{folder}")
    v1 = publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    other = publish_model(ns, tmp_path, "classifier:v2")
    forge_role(ns.url, "team-a", {"classifier:v2": Target(v1), "classifier:latest": Target(other, "v2")},
               [SigningKey.from_file(keys["team-a"])], keys["online"])  # fmt: skip
    host = tmp_path / "host"
    assert_refused(host_pull(ns, host, "classifier:latest", nginx(folder)),
                   "classifier:latest names classifier:v2, which team-a did not sign with the same root", home=host,
                   root=other)  # fmt: skip


# -- rollback, freeze, mix-and-match, mirrors ---------------------------------------------------------------------


def test_an_older_signed_state_is_refused_once_a_newer_one_was_seen(tmp_path, keys, server):
    """Rollback: the repository puts back the state of when v1 was latest; a host that saw v2 refuses it."""
    url, folder = server
    ns = setup_signing(tmp_path, keys, url)
    publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    old_state = (folder / trust_state_key()).read_bytes()
    v2 = publish_model(ns, tmp_path, "classifier:v2", "team-a", "online")
    host = tmp_path / "host"
    assert host_pull(ns, host, "classifier:latest").returncode == 0 and pulled(host, "classifier:latest") == v2
    (folder / trust_state_key()).write_bytes(old_state)  # the attacker writes the folder cas serve serves
    assert_refused(host_pull(ns, host, "classifier:latest"), "older than the version", "rollback", home=host)
    assert_refused(host_pull(ns, host, "classifier:v1"), "rollback", home=host)


def test_a_stale_mirror_in_front_of_an_honest_origin_is_refused(tmp_path, keys, server, nginx):
    """A mirror (nginx over a copy taken before v2) after the host pulled v2 from the origin: refused, though
    every document it serves is validly signed."""
    url, folder = server
    ns = setup_signing(tmp_path, keys, url)
    publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    shutil.copytree(folder, tmp_path / "mirror")
    publish_model(ns, tmp_path, "classifier:v2", "team-a", "online")
    host = tmp_path / "host"
    assert host_pull(ns, host, "classifier:v2").returncode == 0
    mirror = nginx(tmp_path / "mirror")
    assert_refused(host_pull(ns, host, "classifier:latest", mirror), "rollback", home=host)


def test_a_state_past_its_expiry_is_refused_until_the_publisher_refreshes_it(tmp_path, keys, nginx):
    """Indefinite freeze: a validly signed state replayed past its expiry is refused; a refresh lets pulls on."""
    folder = tmp_path / "repo"
    ns = setup_signing(tmp_path, keys, f"file://{folder}")
    root = publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    run("trust", "refresh", ns.url, "--days", "0.00002", "--sign", keys["online"], home=ns)  # 1.7 s
    time.sleep(2.5)
    host, url = tmp_path / "host", nginx(folder)
    assert_refused(host_pull(ns, host, "classifier:v1", url), "expired", "cas trust refresh", home=host, root=root)
    run("trust", "refresh", ns.url, "--sign", keys["online"], home=ns)
    assert host_pull(ns, host, "classifier:v1", url).returncode == 0 and pulled(host, "classifier:v1") == root


def test_mixing_a_signed_ref_with_another_tree_or_two_states_documents_is_refused(tmp_path, keys, nginx):
    """Mix-and-match: the ref of v1 rewritten to name v2's tree; then team A's newest document replaced by an
    older one that the state does not name."""
    folder = tmp_path / "repo"
    ns = setup_signing(tmp_path, keys, f"file://{folder}")
    v1 = publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    v2 = publish_model(ns, tmp_path, "classifier:v2")  # unsigned: its tree is there to borrow
    ref_v2 = decode_ref((folder / "refs/classifier/v2").read_bytes())
    forged = ref_v2._replace(version="v1")
    ref_file = folder / "refs/classifier/v1"
    ref_file.chmod(0o644)
    ref_file.write_bytes(forged.encode())
    host, url = tmp_path / "host", nginx(folder)
    assert_refused(host_pull(ns, host, "classifier:v1", url), "signature names", v1[:16], home=host, root=v2)
    run("sign", "classifier:v2", "--remote", ns.url, "--sign", keys["team-a"], "--sign", keys["online"], home=ns)
    newest, older = folder / trust_role_key("team-a", 2), folder / trust_role_key("team-a", 1)
    newest.chmod(0o644)
    newest.write_bytes(older.read_bytes())
    assert_refused(host_pull(ns, host, "classifier:v2", url), "not the version the signed state names", home=host,
                   root=v2)  # fmt: skip


def test_endless_trust_documents_are_cut_off(tmp_path, keys, server, proxy):
    """Endless data: a proxy answers every trust document with 2 GB of zeros; the pull stops at the bound."""
    ns = setup_signing(tmp_path, keys, server[0])
    root = publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    hostile = proxy(server[0], "bloat-trust")
    host = tmp_path / "host"
    assert_refused(host_pull(ns, host, "classifier:v1", hostile), "more than the", home=host, root=root)
    # the state and the root after the policy's (asked for ahead), the ref and tree read meanwhile: nothing after
    assert stats(hostile)["requests"] <= 4


# -- key compromise -----------------------------------------------------------------------------------------------


def test_a_rotated_key_is_no_longer_trusted_after_one_signed_update(tmp_path, keys, server, token):
    """Team A's key leaks: the root owner gives team-a a new key.  At its next pull the host follows the new
    root: the old key's signatures stop counting, on new pulls and on what it verified before, and the state of
    the old root, put back, is a rollback."""
    ns = setup_signing(tmp_path, keys, server[0], cli=True)
    run(
        "push",
        "classifier:v1",
        "--remote",
        ns.url,
        "--sign",
        keys["team-a"],
        "--sign",
        keys["online"],
        home=ns,
        check=False,
    )  # not in this cache yet: fails in one line
    v1 = publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    host = tmp_path / "host"
    env = {**os.environ, "CAS_TRUST": str(ns.policy)}
    assert host_pull(ns, host, "classifier:v1").returncode == 0
    assert cas_cli("materialize", "classifier:v1", home=host, env=env).returncode == 0
    state_under_root_1 = (server[1] / trust_state_key()).read_bytes()
    run("trust", "delegate", ns.url, "team-a", "--names", "classifier*", "--key", f"{keys['team-a-new']}.pub",
        "--sign", keys["root"], "--sign", keys["online"], home=ns)  # fmt: skip
    evil = publish_model(ns, tmp_path, "classifier:v3")
    stolen = SigningKey.from_file(keys["team-a"])
    forge_role(ns.url, "team-a", {"classifier:v3": Target(evil), "classifier:latest": Target(evil, "v3")}, [stolen],
               keys["online"])  # fmt: skip
    assert_refused(host_pull(ns, host, "classifier:v3"), "signed by 0 of the keys", home=host, root=evil)
    old = cas_cli("materialize", "classifier:v1", home=host, check=False, env=env)
    assert old.returncode == 1 and "was not verified under" in old.stderr  # by the leaked key: not any more
    run("sign", "classifier:v1", "--remote", ns.url, "--sign", keys["team-a-new"], "--sign", keys["online"], home=ns)
    assert host_pull(ns, host, "classifier:v1").returncode == 0
    assert cas_cli("materialize", "classifier:v1", home=host, env=env).returncode == 0
    assert pulled(host, "classifier:v1") == v1
    (server[1] / trust_state_key()).write_bytes(state_under_root_1)  # back to when the leaked key counted
    assert_refused(host_pull(ns, host, "classifier:v1"), "names root version 3, older than the version 4 this host "
                   "trusts: a rollback", home=host)  # fmt: skip


def test_a_host_anchored_at_a_newer_root_refuses_a_state_of_an_older_one(tmp_path, keys, server):
    """Freeze: a host set up after the root moved to version 4 (a role was added; team A's key and the online
    key are unchanged) is served the state of root version 3, still signed and unexpired, naming classifier:v1 as
    latest though v2 is out. Its signatures check under root 4, so only the root version tells: refused."""
    url, folder = server
    ns = setup_signing(tmp_path, keys, url, cli=True)
    publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    state_of_root_3 = (folder / trust_state_key()).read_bytes()
    run("trust", "delegate", url, "team-c", "--names", "summarizer*", "--key", f"{keys['team-b']}.pub",
        "--sign", keys["root"], "--sign", keys["online"], home=ns)  # fmt: skip
    publish_model(ns, tmp_path, "classifier:v2", "team-a", "online")
    ns.policy.write_text(TrustPolicy((Anchor(url, (folder / trust_root_key(4)).read_bytes()),)).to_json())
    (folder / trust_state_key()).write_bytes(state_of_root_3)
    host = tmp_path / "host"
    assert_refused(host_pull(ns, host, "classifier:latest"), "names root version 3, older than the version 4 this "
                   "host trusts: a rollback", home=host)  # fmt: skip


def test_a_role_document_checked_under_an_old_root_is_checked_again_under_the_new_one(tmp_path, keys, server):
    """A host checks a role's signatures once, not at every pull.  When the root takes team A's key away and the
    state still pins the role document that key signed, the host must check that document again, and refuse."""
    ns = setup_signing(tmp_path, keys, server[0], cli=True)
    publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    v2 = publish_model(ns, tmp_path, "classifier:v2", "team-a", "online")
    host = tmp_path / "host"
    assert host_pull(ns, host, "classifier:v1").returncode == 0  # the role document naming v1 and v2 is checked
    run("trust", "delegate", ns.url, "team-a", "--names", "classifier*", "--key", f"{keys['team-a-new']}.pub",
        "--sign", keys["root"], "--sign", keys["online"], home=ns)  # fmt: skip
    assert_refused(host_pull(ns, host, "classifier:v2"), "signed by 0 of the keys", home=host, root=v2)


def test_a_verified_model_resolves_offline_and_the_warm_path_reads_no_repository(tmp_path, keys, server):
    ns = setup_signing(tmp_path, keys, server[0])
    v1 = publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    host = tmp_path / "host"
    assert host_pull(ns, host, "classifier:v1").returncode == 0
    cache = Cache(host, trust=ns.policy)
    assert cache.resolve("classifier:v1", remote="http://127.0.0.1:9", offline=True).root == v1
    unsigned = Cache(host)
    unsigned.add(tmp_path / "models" / "classifier-v1", "classifier:v9")
    with pytest.raises(cas.Untrusted, match="was not verified under"):
        cache.resolve("classifier:v9", offline=True)


SERVICE = "import descriptor\nclass S:\n    m = descriptor.Model('classifier:v1')\nprint(S().m.path)"


def test_a_changed_policy_file_applies_on_the_warm_path_at_once(tmp_path, keys, server):
    """The warm path reads a policy's anchors as this host kept them, keyed by the file's identity: narrowing the
    policy must apply to the next service at once, offline."""
    ns = setup_signing(tmp_path, keys, server[0])
    publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    host = tmp_path / "host"
    assert host_pull(ns, host, "classifier:v1").returncode == 0
    env = {**os.environ, "CAS_HOME": str(host), "CAS_TRUST": str(ns.policy), "CAS_OFFLINE": "1"}

    def service() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", SERVICE], env=env, capture_output=True, text=True, cwd=REPO)

    for _ in range(2):  # the first reads the policy file, the second what the host kept of it
        assert service().returncode == 0
    policy = TrustPolicy.from_file(ns.policy)
    ns.policy.write_text(TrustPolicy(tuple(a._replace(names=("ranker*",)) for a in policy.anchors)).to_json())
    refused = service()
    assert refused.returncode == 1 and "was not verified under" in refused.stderr, refused.stderr
    ns.policy.write_text(policy.to_json())
    assert service().returncode == 0


def test_prune_and_removals_keep_every_trust_document(tmp_path, keys, server, token):
    """Signatures live next to refs: a prune deleting a removed version's data leaves them all, and the signed
    version still pulls under the policy."""
    url, folder = server
    ns = setup_signing(tmp_path, keys, url)
    v1 = publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    publish_model(ns, tmp_path, "ranker:v1", "team-b", "online")
    before = {p: p.read_bytes() for p in (folder / "trust").rglob("*") if p.is_file()}
    cas.remove_remote(["ranker:v1"], url)
    for _ in range(2):  # mark, then delete
        cas.prune_remote(url, grace=0, max_unused=0.0)
    assert not list((folder / "refs").glob("ranker/*"))
    assert {p: p.read_bytes() for p in (folder / "trust").rglob("*") if p.is_file()} == before
    host = tmp_path / "host"
    assert host_pull(ns, host, "classifier:latest").returncode == 0 and pulled(host, "classifier:latest") == v1


# -- export files: signatures travel with the model ---------------------------------------------------------------


def export_parts(data: bytes) -> list[bytes]:
    """The records of an export file of format 2 (ref, tree, signatures, chunks), as its docstring lays it out."""
    at, parts = len(MAGIC) + 1, []
    while data[at : at + 4] != END or at + 4 + 32 != len(data):
        (n,) = struct.unpack(">I", data[at : at + 4])
        parts.append(data[at + 4 : at + 4 + n])
        at += 4 + n
    return parts


def export_file(parts: list[bytes]) -> bytes:
    """What anyone can write: the records framed and the end check recomputed (it proves nothing)."""
    body = MAGIC + bytes([2]) + b"".join(struct.pack(">I", len(p)) + p for p in parts)
    return body + END + blake3.blake3(body).digest()


def test_an_export_file_carries_its_signatures_and_an_air_gapped_import_checks_them(tmp_path, keys, server):
    """A host that verified classifier:v1 exports it; an air-gapped host with the policy imports it and may run
    it.  A file exported by a host without a policy, or one whose model was swapped under v1's signatures,
    is refused in one line with nothing stored."""
    ns = setup_signing(tmp_path, keys, server[0])
    v1 = publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    v2 = publish_model(ns, tmp_path, "classifier:v2")  # the attacker's, unsigned
    connected, gapped = tmp_path / "connected", tmp_path / "gapped"
    assert host_pull(ns, connected, "classifier:v1").returncode == 0
    signed = tmp_path / "v1.casx"
    assert cas_cli("export", "classifier:v1", signed, home=connected).returncode == 0
    env = {**os.environ, "CAS_TRUST": str(ns.policy)}
    assert cas_cli("import", signed, home=gapped, env=env).returncode == 0
    assert cas_cli("materialize", "classifier:v1", home=gapped, env=env).returncode == 0
    assert pulled(gapped, "classifier:v1") == v1

    plain = tmp_path / "plain"
    assert cas_cli("pull", "classifier:v2", "--remote", server[0], home=plain).returncode == 0
    unsigned = tmp_path / "v2.casx"
    assert cas_cli("export", "classifier:v2", unsigned, home=plain).returncode == 0
    refused = cas_cli("import", unsigned, home=gapped, check=False, env=env)
    assert_refused(refused, "carries no signatures", home=gapped, root=v2)

    ref, tree, none, *chunks = export_parts(unsigned.read_bytes())
    assert none == b""
    swapped = decode_ref(ref)._replace(version="v1").encode()  # v2's tree, under v1's name and signatures
    _, _, v1_signatures, *_ = export_parts(signed.read_bytes())
    forged = tmp_path / "forged.casx"
    forged.write_bytes(export_file([swapped, tree, v1_signatures, *chunks]))
    fresh = tmp_path / "fresh"
    assert_refused(cas_cli("import", forged, home=fresh, check=False, env=env), "signature names", v1[:16],
                   home=fresh, root=v2)  # fmt: skip
    assert cas_cli("import", forged, home=tmp_path / "trusting").returncode == 0  # without a policy: as before


# -- the report: who signed what -----------------------------------------------------------------------------------


def test_verify_remote_signatures_says_who_signed_each_version_and_where_latest_was_moved(tmp_path, keys, nginx):
    """Without a policy the report trusts the repository's first root and names the role of each version, the
    unsigned one, and the listing's latest that is not the signed latest; with CAS_TRUST it checks under it."""
    folder = tmp_path / "repo"
    ns = setup_signing(tmp_path, keys, f"file://{folder}")
    publish_model(ns, tmp_path, "classifier:v1", "team-a", "online")
    publish_model(ns, tmp_path, "ranker:v1", "team-b", "online")
    time.sleep(0.01)
    publish_model(ns, tmp_path, "classifier:v2")  # the attacker's: newest in the listing, unsigned
    url, home = nginx(folder), tmp_path / "auditor"
    out = cas_cli("verify", "--remote", url, "--signatures", home=home, check=False)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("signed: classifier:v1 by team-a (") for line in lines), out.stdout
    assert any(line.startswith("signed: ranker:v1 by team-b (") for line in lines), out.stdout
    assert any(line.startswith("UNSIGNED: classifier:v2: ") and "not signed" in line for line in lines), out.stdout
    assert "LATEST: classifier: the listing's newest is v2, its signed latest is v1" in lines
    assert lines[-1].startswith("NOT ALL SIGNED: 2 of 3 versions signed, checked against the repository's own root")
    assert not (home / "trust").exists()  # trusted on first use in a scratch state, nothing kept
    env = {**os.environ, "CAS_TRUST": str(ns.policy)}
    out = cas_cli("verify", "--remote", url, "--signatures", "--json", home=home, check=False, env=env)
    doc = json.loads(out.stdout)["signatures"]
    assert doc["under"] == f"the trust policy {ns.policy}" and not doc["ok"]
    assert {v["tag"]: bool(v["problem"]) for v in doc["versions"]} == {
        "classifier:v1": False, "ranker:v1": False, "classifier:v2": True}  # fmt: skip
    unsigned = tmp_path / "unsigned"
    ns.url = f"file://{unsigned}"
    publish_model(ns, tmp_path, "other:v1")
    out = cas_cli("verify", "--remote", nginx(unsigned), "--signatures", home=home, check=False)
    assert out.returncode == 1 and "UNSIGNED: other:v1: unsigned" in out.stdout
    assert out.stdout.splitlines()[-1] == "NOT ALL SIGNED: 0 of 1 versions signed, checked against nothing: the " \
        "repository has no signatures"  # fmt: skip
