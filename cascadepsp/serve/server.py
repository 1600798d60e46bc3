"""Serve the app with uvicorn: one process, or ``--workers N`` processes each with its own Refiner."""

from __future__ import annotations

import argparse
import copy
import logging
import logging.config
import os

from .settings import SETTINGS_ENV, ServeSettings

log = logging.getLogger("cascadepsp.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _require_extra() -> None:
    """A one-line ImportError naming the extra when FastAPI, uvicorn or python-multipart is missing."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"cascadepsp serve needs fastapi, uvicorn and python-multipart ({e.name} is missing): "
                          "pip install 'cascadepsp[serve]'") from None


def run(settings: ServeSettings) -> int:
    """Serve until SIGTERM / Ctrl-C (in-flight requests are finished first); returns the exit code."""
    _require_extra()
    import uvicorn

    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)  # applied in every worker process
    log_config["loggers"]["cascadepsp"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    logging.config.dictConfig(log_config)
    if settings.host not in LOOPBACK:
        log.warning("cascadepsp serve: listening on %s; the service has no authentication, put it behind a "
                    "proxy that has", settings.host)
    options = dict(host=settings.host, port=settings.port, timeout_graceful_shutdown=settings.graceful_timeout,
                   log_level="info", log_config=log_config, server_header=False)
    try:
        if settings.workers == 1:
            from .app import create_app

            uvicorn.run(create_app(settings=settings), **options)
        else:  # each worker process builds its app (and loads its Refiner once) from the settings in its environment
            os.environ[SETTINGS_ENV] = settings.to_json()
            uvicorn.run("cascadepsp.serve.app:app_from_env", factory=True, workers=settings.workers, **options)
    except KeyboardInterrupt:  # Ctrl-C: uvicorn finished the requests in flight, then re-raised the signal
        return 130
    return 0


def run_cli(args: argparse.Namespace) -> int:
    """``cascadepsp serve``: settings from the parsed command line, then :func:`run`."""
    return run(ServeSettings(host=args.host, port=args.port, weights=args.weights, backend=args.backend,
                             precision=args.precision, second_pass_iou=args.second_pass_iou,
                             local_step=args.local_step,
                             device=args.device, max_pixels=args.max_pixels, max_upload_mb=args.max_upload_mb,
                             workers=args.workers, queue_size=args.queue_size, threads=args.threads,
                             max_L=args.max_L, max_instances=args.max_instances,
                             graceful_timeout=args.graceful_timeout))
