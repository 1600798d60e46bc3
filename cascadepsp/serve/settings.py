"""The service's settings: one frozen dataclass, checked once, passed to worker processes as JSON."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from ..constants import BACKENDS, LOCAL_STEPS, PRECISIONS

SETTINGS_ENV = "CASCADEPSP_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker process


@dataclass(frozen=True)
class ServeSettings:
    """What ``cascadepsp serve`` was started with (the command's options, same names and defaults)."""

    host: str = "127.0.0.1"
    port: int = 8000
    weights: str = "default"
    backend: str = "torch"
    precision: str = "auto"  # Refiner(precision=): fp32 / bf16 / fp16, int8 with the openvino backend
    second_pass_iou: float | None = None  # Refiner(second_pass_iou=): None keeps the weights' setting
    local_step: str | None = None  # Refiner(local_step=): None keeps the weights' setting
    device: str | None = None
    engine: str = "batched"
    max_pixels: int = 25_000_000  # per photo; the photo's header is checked before its pixels are decoded
    max_upload_mb: float = 50.0  # per request body, in MiB (2**20 bytes)
    workers: int = 1
    queue_size: int = 16  # requests that may wait for the model per worker (one runs at a time); more get 503
    threads: int | None = None  # torch threads per worker (default: the CPUs divided among the workers)
    max_L: int = 2048  # largest L a request may ask for (L x L windows: memory and time grow with L**2)
    max_instances: int = 100  # annotations per /v1/refine-instances request
    graceful_timeout: float = 300.0  # seconds SIGTERM waits for in-flight requests before closing them
    warmup: bool = True  # one tiny refinement at start-up, so the first request does not pay one-time costs

    def __post_init__(self) -> None:
        for name in ("port", "max_pixels", "workers", "max_L", "max_instances"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "port" else 1):
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.port > 65535:
            raise ValueError(f"port: expected 0-65535, got {self.port}")
        if not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise ValueError(f"queue_size: expected an integer >= 0, got {self.queue_size!r}")
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb: expected a positive number, got {self.max_upload_mb!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads: expected a positive integer, got {self.threads!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {'/'.join(BACKENDS)}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {'/'.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "int8" and self.backend != "openvino":
            raise ValueError("precision: 'int8' runs on backend 'openvino' only")
        if self.second_pass_iou is not None and not 0.0 <= self.second_pass_iou <= 1.0:
            raise ValueError(f"second_pass_iou: expected a value in [0, 1] (0: one pass), got {self.second_pass_iou!r}")
        if self.local_step is not None and self.local_step not in LOCAL_STEPS:
            raise ValueError(f"local_step: expected one of {', '.join(LOCAL_STEPS)}, got {self.local_step!r}")
        if self.graceful_timeout < 0:
            raise ValueError(f"graceful_timeout: expected seconds >= 0, got {self.graceful_timeout!r}")

    @property
    def max_upload_bytes(self) -> int:
        """The request body limit in bytes."""
        return int(self.max_upload_mb * 2**20)

    def torch_threads(self) -> int:
        """Torch threads for one worker: ``threads``, else the CPUs this process may use divided among the workers."""
        if self.threads is not None:
            return self.threads
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cpus // self.workers)

    def to_json(self) -> str:
        """The settings as a JSON object."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        """Settings from :meth:`to_json`'s output."""
        return cls(**json.loads(text))

    @classmethod
    def from_env(cls) -> ServeSettings:
        """Settings from the ``CASCADEPSP_SERVE_SETTINGS`` environment variable (defaults when unset)."""
        text = os.environ.get(SETTINGS_ENV)
        return cls.from_json(text) if text else cls()
