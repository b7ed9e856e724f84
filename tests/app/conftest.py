"""Fixtures of the command-line tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> dict[str, str]:
    """Environment with a session-wide temporary model cache holding the trained mlp."""
    from curvprobe.zoo import models

    cache = tmp_path_factory.mktemp("curvprobe-cache")
    models.pretrained("mlp", cache_dir=cache, progress=False)
    out = dict(os.environ, CURVPROBE_CACHE=str(cache))
    for name in ("CURVPROBE_PART_DELAY", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        out.pop(name, None)
    return out
