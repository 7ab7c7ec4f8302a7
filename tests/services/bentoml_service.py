"""A BentoML service with two models: one stored on the host beforehand, one pulled on first access.

    CAS_REMOTE=http://127.0.0.1:8000 bentoml serve bentoml_service:Embedder

Both workers resolve the models in ``__init__``, inside BentoML's event loop: the
first to get there pulls ``minilm:latest`` from ``$CAS_REMOTE`` (only the chunks no
local file holds), the other waits for it and serves the same version.
"""

import hashlib
import os

import bentoml

import descriptor


def sha256_of_files(model: descriptor.ResolvedModel) -> dict[str, str]:
    return {
        p.relative_to(model.path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(model.path.rglob("*"))
        if p.is_file()
    }


@bentoml.service(workers=2)
class Embedder:
    head = descriptor.Model("classifier:v1")  # stored on this host: resolved offline
    encoder = descriptor.Model("minilm:latest")  # pulled from $CAS_REMOTE if it is not here

    def __init__(self) -> None:
        self.weights = self.encoder.path_of("model.safetensors")
        print(f"worker {os.getpid()} serves {self.encoder.tag} and {self.head.tag}", flush=True)

    @bentoml.api
    def files(self) -> dict:
        """Both models' versions and the SHA-256 of every file, read now."""
        return {
            "pid": os.getpid(),
            "encoder": {"tag": self.encoder.tag, "files": sha256_of_files(self.encoder)},
            "head": {"tag": self.head.tag, "files": sha256_of_files(self.head)},
        }
