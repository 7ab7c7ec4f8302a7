"""``cas import-bento``: store a model from a BentoML model store with its labels, metadata and creation time.

The store is BentoML's own (``$BENTOML_HOME``, as BentoML reads it when first
imported), read through ``bentoml.models.get``; bentoml is imported only here.

BentoML's ``model.yaml`` is left out: it is BentoML's record of the model, not
a file of the model.  What it says moves into the cas ref instead (labels,
metadata, creation time, and the BentoML tag and module as labels), and
without it the same saved files give the same tree root whichever store or
version they came from.  The files the saving code wrote are copied as they
are, ``custom_objects.pkl`` included.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..content import ref, tags
from ..content.ref import ModelInfo
from ..errors import CasError, InvalidInput, InvalidManifest, InvalidTag, NotFound
from ..local.cache import LocalCache
from . import view

if TYPE_CHECKING:
    from bentoml import Model

RECORD = "model.yaml"
YAML_LOGGER = "bentoml._internal.models.model"  # logs a YAML error of a record over many lines, then raises it


def import_bento(cache: LocalCache, tag: str, name: str | None = None) -> ModelInfo:
    """Store the BentoML model ``tag`` (``NAME:VERSION``, ``NAME:latest`` or ``NAME``) under ``name``
    (``NAME[:VERSION]``; by default BentoML's own name and version)."""
    model = find_model(tag)
    labels = {**model.info.labels, "bentoml_tag": str(model.tag)}
    if model.info.module:
        labels["bentoml_module"] = model.info.module
    metadata = plain_metadata(model)
    created = model.info.creation_time.timestamp()
    import tempfile  # here: every cas command loads this module, and tempfile costs them 3 ms

    with tempfile.TemporaryDirectory(prefix="cas-bento-") as tmp:
        link_files(Path(model.path), Path(tmp))
        return cache.add(tmp, target_tag(model, name), labels=labels, metadata=metadata, created=created)


def find_model(tag: str) -> Model:
    """The model BentoML's store holds under ``tag``; bentoml missing, the tag malformed or absent: one line."""
    try:
        import bentoml
    except ImportError:
        raise CasError("importing from BentoML needs bentoml: pip install bentoml") from None
    try:
        with _quiet(YAML_LOGGER):
            return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound as e:
        raise NotFound(f"BentoML model {tag} not found: {e}; list the store with 'bentoml models list'") from None
    except ValueError as e:
        raise InvalidTag(f"invalid BentoML tag {tag!r}: {e}") from None
    except bentoml.exceptions.BentoMLException as e:
        raise CasError(f"BentoML could not read model {tag}: {e}") from None
    except Exception as e:  # noqa: BLE001 - BentoML reading a damaged or forged record: whatever it raises
        first = str(e).strip().partition("\n")[0]
        if type(e).__module__.partition(".")[0] == "yaml":
            raise InvalidManifest(f"BentoML model {tag}: its {RECORD} is not valid YAML ({first}); BentoML reads "
                                  "it with yaml.safe_load, so a tag such as !!python/object is refused, never run; "
                                  "save the model again with BentoML") from None  # fmt: skip
        raise InvalidManifest(f"BentoML model {tag}: BentoML cannot read its {RECORD} ({type(e).__name__}: "
                              f"{first}); save the model again with BentoML") from None  # fmt: skip


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence one of BentoML's loggers: cas says what went wrong itself, in one line."""
    import logging

    log = logging.getLogger(logger)
    was, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = was


def target_tag(model: Model, name: str | None) -> str:
    """``name`` (its version defaulting to BentoML's), else BentoML's tag; ``add`` checks it against cas's tag
    syntax, which BentoML's follows."""
    cas_name, version = tags.split(name) if name is not None else (model.tag.name, None)
    return f"{cas_name}:{version or model.tag.version}"


def plain_metadata(model: Model) -> dict[str, Any]:
    """BentoML's metadata as cas keeps it: dates and times as ISO 8601 text, durations as seconds; anything
    else a ref cannot hold (bytes) is an error naming the entry."""
    metadata = _plain(model.info.metadata)
    try:
        return ref.check_metadata(metadata)
    except InvalidInput as e:
        raise InvalidInput(f"BentoML model {model.tag}: {e}; cas cannot keep it, so it was not imported") from None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value


def link_files(model_dir: Path, into: Path) -> None:
    """Fill ``into`` with links to the model's files but its record, each checked to lie inside the model
    (``view``): ``add`` follows them and copies the bytes, so the store is read once and never linked from
    the cache."""
    what = f"BentoML model {model_dir.parent.name}:{model_dir.name}"
    if not view.build(model_dir, [model_dir], into, what, leave_out=frozenset({RECORD})):
        raise InvalidInput(f"{model_dir} holds no files besides BentoML's {RECORD}; there is nothing to store")
