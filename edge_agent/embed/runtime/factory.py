"""Pick the back-end that runs a model folder: by the model file's suffix, from ``RUNTIMES``.

A new runtime is one module with a ``Backend`` and an opener, and one line here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edge_agent.embed.manifest import Manifest, ManifestError, verified_model_path
from edge_agent.embed.runtime.base import Backend, RuntimeOptions
from edge_agent.embed.runtime.tflite import open_tflite

# (verified model path, its manifest, what the caller asked for) -> a ready back-end.
Opener = Callable[[Path, Manifest, RuntimeOptions], Backend]

RUNTIMES: dict[str, Opener] = {".tflite": open_tflite}


def open_backend(model_dir: str | Path, manifest: Manifest, options: RuntimeOptions | None = None) -> Backend:
    """The model of ``model_dir`` on the runtime its file type needs, after checking the file's sha256."""
    suffix = Path(manifest.model_file).suffix.lower()
    opener = RUNTIMES.get(suffix)
    if opener is None:
        raise ManifestError(f"model file {manifest.model_file} is of no runtime this device has "
                            f"({', '.join(RUNTIMES)} files)")
    return opener(verified_model_path(model_dir, manifest), manifest, options or RuntimeOptions())
