"""``cascadepsp serve``: the refinement service over HTTP (FastAPI + uvicorn; ``pip install 'cascadepsp[serve]'``).

``create_app`` (in :mod:`cascadepsp.serve.app`) builds the application; :func:`run` serves it. This module
imports neither FastAPI nor torch, so the command line stays quick without them.
"""

from __future__ import annotations

from .server import run, run_cli
from .settings import ServeSettings

__all__ = ["ServeSettings", "run", "run_cli"]
