"""Signed models: who may publish which names, and how a host refuses everything else.

A repository that signs keeps three kinds of document next to its refs
(``documents``; ``cas trust init`` sets them up):

- ``trust/root/<n>``: the root, signed by a threshold of root keys (kept
  offline).  It names the online key(s) and the roles: a role's keys, its
  threshold, and the names it may sign (``team-a: classifier*``).  Every
  new version is signed by the root keys of the last one and by its own.
- ``trust/roles/<role>/<n>``: what a role signed: tag -> tree root hash,
  ``name:latest`` -> version and root.  Created, never overwritten.
- ``trust/state``: the newest version and BLAKE3 of every role document
  and the root's version, signed by the online key at each publish; it
  expires within days (``cas trust refresh`` renews it).

A host's policy (``policy``; ``CAS_TRUST``) names the root it starts from.
A pull reads the state (one small request), the covering role's document
only when it changed, and new roots only when the state names one
(``client``); the tree it then pulls must hash to the signed root.  What
each attack meets (TUF's list):

- arbitrary model, or unsigned repository: no role document signed by a
  threshold of a role's keys names the tag -> refused.
- key not trusted for this name: a role's document counts only for the
  names its root entry gives it, and only its own keys' signatures count.
- rollback: the host keeps the newest state, root and role versions it
  accepted (``cas.local.trusted``), per anchor, and refuses anything older;
  ``latest`` is signed, so a repository's listing cannot choose it.
- indefinite freeze: a state past its expiry is refused.
- mix-and-match: the state pins each role document by hash, a role pins
  each tag's tree root, and a tree is verified by its root hash.
- endless data: every trust document is read with a size bound.
- malicious mirror or CDN: nothing above depends on where the bytes came
  from; the host's newest versions are per anchor, not per URL.
- key compromise: a new root version drops or replaces the key; hosts
  follow it at their next pull, and a model verified by a key the root no
  longer trusts for it is verified again (and refused until re-signed).

Signatures are Ed25519 (``cryptography``); nothing here invents a primitive.
"""
