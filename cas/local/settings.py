"""What a cache is set up with, each from its argument else the environment: root, durability, budget, trust.

The environment is read when a setting is first needed (a service's warm
path reads only ``CAS_HOME`` and ``CAS_TRUST``).  A policy file is parsed
once per process; a warm path asks for the anchors this host kept from it
(``trusted.KnownPolicy``: no JSON parsed, no root hashed) and parses the
file only when it changed since.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..system.envflags import env_flag

TYPE_CHECKING = False  # typing costs 2 ms to import, which every service would pay on start
if TYPE_CHECKING:
    from typing import TypeAlias

    from ..trust.policy import TrustPolicy
    from .trusted import KnownPolicy, TrustedState

    Spec: TypeAlias = "str | os.PathLike[str] | TrustPolicy | None"


def default_root() -> str:
    """``$CAS_HOME``, else ``$XDG_CACHE_HOME/cas``, else ``~/.cache/cas``."""
    home = os.environ.get("CAS_HOME")
    if home:
        return home
    xdg = os.environ.get("XDG_CACHE_HOME")
    return os.path.join(xdg, "cas") if xdg else os.path.expanduser("~/.cache/cas")


class Settings:
    """The settings of one cache as given (None: the environment's), resolved when first needed."""

    def __init__(self, durable: bool | None, max_size: int | str | None, trust: Spec):
        self.given_durable, self.given_max_size, self.trust = durable, max_size, trust
        self._durable = durable
        self._loaded: tuple[object, TrustPolicy | None] | None = None

    def durable(self) -> bool:
        if self._durable is None:
            self._durable = env_flag("CAS_DURABLE", True)
        return self._durable

    def max_size(self) -> int | None:
        """The size budget in bytes (``max_size=``, else ``$CAS_MAX_SIZE``), or None for no budget."""
        from .space import parse_size

        if self.given_max_size is not None:
            return parse_size(self.given_max_size, "max_size")
        budget = os.environ.get("CAS_MAX_SIZE", "").strip()
        return parse_size(budget, "CAS_MAX_SIZE") if budget else None

    def spec(self, override: Spec) -> Spec:
        spec = override if override is not None else self.trust
        return spec if spec is not None else (os.environ.get("CAS_TRUST", "").strip() or None)

    def policy(self, override: Spec) -> TrustPolicy | None:
        """The policy in force: ``override``, else the cache's ``trust``, else ``$CAS_TRUST``'s (read once)."""
        spec = self.spec(override)
        if spec is None:
            return None
        if self._loaded is None or self._loaded[0] != spec:
            from ..trust.policy import load

            self._loaded = (spec, load(spec))
        return self._loaded[1]

    def known(self, override: Spec, trusted: Callable[[], TrustedState]) -> TrustPolicy | KnownPolicy | None:
        """The policy in force as a warm path needs it: a file's anchors kept under the cache since it last
        read that file, else the whole policy."""
        spec = self.spec(override)
        if not isinstance(spec, (str, os.PathLike)):
            return self.policy(override)
        from .trusted import policy_key

        try:
            key = policy_key(spec)
        except OSError:
            return self.policy(override)  # says what is wrong with it
        known: TrustPolicy | KnownPolicy | None = trusted().known_policy(key, f"the trust policy {spec}")
        if known is None:
            known = self.policy(override)
            trusted().remember_policy(key, known)  # type: ignore[arg-type]
        return known
