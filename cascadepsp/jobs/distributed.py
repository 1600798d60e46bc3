"""Refine data sets larger than one machine: the folder tool's jobs run on a Ray Data actor pool.

The driver pairs the inputs exactly as :func:`cascadepsp.jobs.folder.refine_folder` does (same naming, output guard,
resume and report); each actor holds one :class:`~cascadepsp.Refiner` and runs the folder tool's own
:func:`~cascadepsp.jobs.folder.process_job` on one job at a time, so outputs are written atomically by the actor that
refined them and are byte-identical to a plain run with the same weights and thread count. An actor that dies is
restarted by Ray and its job retried; a job whose worker dies on every try is reported as failed.

Inputs and outputs must be paths that every node sees at the same place (a shared file system, or an object
store mounted as one): the actors read and write them directly.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..inference.refiner import check_L_fits
from ..io.images import PathLike
from ..io.layouts import Sample
from .folder import (
    Options,
    RunPlan,
    _Guard,
    clean_temps,
    finish_run,
    job_row,
    log_failure,
    new_accumulators,
    plan_run,
    process_job,
)
from .pairing import Job
from .report import Row, Summary

RETRIES = 3  # default retries of a job whose actor died (a crash, OOM kill, lost node) before it is reported
# One image per Ray task (up to this many images; beyond it a task holds several) and one task at a time per
# actor, so an actor's death is charged to the image it was refining, not to images queued behind it.
MAX_TASKS = 10_000


@dataclass(frozen=True)
class ActorSpec:
    """Resources of one actor and how many actors to run."""

    actors: int
    cpus: float
    gpus: float

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


def _require_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError("--ray needs Ray: pip install 'cascadepsp[ray]'") from e
    return ray


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``) or, with None,
    start a local Ray instance; returns True when this call started Ray (so the caller shuts it down)."""
    ray = _require_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(**kwargs)
    return True


def plan_actors(resources: dict[str, float], actors: int | None = None, cpus_per_actor: float | None = None,
                gpus_per_actor: float | None = None) -> ActorSpec:
    """Actor count and resources from the cluster's ``resources`` (``ray.cluster_resources()``): one actor per
    GPU when the cluster has GPUs, else actors of ``cpus_per_actor`` CPUs (default 2) filling the CPUs."""
    n_gpu, n_cpu = float(resources.get("GPU", 0.0)), float(resources.get("CPU", 1.0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if n_gpu >= 1 else 0.0
    if gpus_per_actor < 0 or (cpus_per_actor is not None and cpus_per_actor <= 0):
        raise ValueError("ray: cpus per actor must be > 0 and GPUs per actor >= 0")
    if gpus_per_actor > 0 and n_gpu < gpus_per_actor:
        raise ValueError(f"ray: {gpus_per_actor:g} GPU(s) per actor asked for, the cluster has {n_gpu:g}")
    if cpus_per_actor is None:
        cpus_per_actor = 1.0 if gpus_per_actor > 0 else min(2.0, n_cpu)
    if actors is None:
        by_cpu = int(n_cpu // cpus_per_actor)
        actors = min(by_cpu, int(n_gpu // gpus_per_actor)) if gpus_per_actor > 0 else by_cpu
    if actors < 1:
        raise ValueError(f"ray: no actor fits ({cpus_per_actor:g} CPU(s), {gpus_per_actor:g} GPU(s) each; "
                         f"the cluster has {n_cpu:g} CPU(s), {n_gpu:g} GPU(s))")
    return ActorSpec(actors=actors, cpus=cpus_per_actor, gpus=gpus_per_actor)


def _job_record(index: int, job: Job) -> dict[str, Any]:
    s = job.sample
    return {"index": index, "name": s.name, "image": _opt(s.image), "mask": _opt(s.mask), "gt": _opt(s.gt),
            "group": s.group, "problem": s.problem or "", "output": str(job.output), "overlay": str(job.overlay)}


def _opt(p: Path | None) -> str:
    return "" if p is None else str(p)


def _job_from_record(r: dict[str, Any]) -> Job:
    def path(key: str) -> Path | None:
        return Path(r[key]) if r[key] else None

    sample = Sample(str(r["name"]), path("image"), path("mask"), path("gt"), str(r["group"]), r["problem"] or None)
    return Job(sample, Path(r["output"]), Path(r["overlay"]))


class RefineActor:
    """One Ray actor: a refiner built once, then :func:`process_job` per job; returns rows and metric parts."""

    def __init__(self, refiner_kwargs: dict[str, Any], opts: dict[str, Any], input_dirs: list[str],
                 threads: int | None, factory: Callable[..., Any] | None = None) -> None:
        import torch

        from ..inference.refiner import Refiner

        if threads:
            torch.set_num_threads(threads)
        self.refiner = (factory or Refiner)(**refiner_kwargs)
        self.opts = Options(**opts)
        self.guard = _Guard([Path(d) for d in input_dirs])
        check_L_fits(self.opts.L, getattr(self.refiner, "device", None))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"index": [], "row": [], "metrics": []}
        for i in range(len(batch["index"])):
            record = {k: _scalar(v[i]) for k, v in batch.items()}
            acc = new_accumulators()
            row = process_job(_job_from_record(record), self.refiner, self.opts, self.guard, acc)
            out["index"].append(int(record["index"]))
            out["row"].append(json.dumps(dataclasses.asdict(row)))
            out["metrics"].append(json.dumps({k: m.state() for k, m in acc.items()}))
        return out


def _scalar(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def refine_dataset(inputs: Sequence[PathLike], out: PathLike, *, address: str | None = None,
                   actors: int | None = None, cpus_per_actor: float | None = None,
                   gpus_per_actor: float | None = None, weights: Any = "default", engine: str = "batched",
                   batch_size: int | None = None, precision: str = "auto", backend: str = "torch",
                   second_pass_iou: float | None = None, local_step: str | None = None,
                   gt: PathLike | None = None, fast: bool = False,
                   L: int = 900, threshold: float | None = None, labels: bool = False, overlay: bool = False,
                   resume: bool = True, limit: int | None = None, report: PathLike | None = None, progress: bool = True,
                   on_row: Callable[[Row], None] | None = None,
                   refiner_factory: Callable[..., Any] | None = None, retries: int = RETRIES) -> Summary:
    """:func:`~cascadepsp.jobs.folder.refine_folder` on a Ray Data actor pool (local, or the cluster at ``address``).

    Same pairing, naming, atomic writes, resume, per-image failures and report as the folder tool. Actors get
    one GPU each when the cluster has GPUs (``device="cuda"``), otherwise ``cpus_per_actor`` CPUs (default 2)
    and as many torch threads. ``refiner_factory(**kwargs)`` replaces :class:`~cascadepsp.Refiner` in the actors
    (it receives the same keyword arguments). A dead actor is restarted and its job tried again up to
    ``retries`` times, then reported as failed; the death counts only against the image the actor was
    refining (one image per task, one task at a time per actor, up to :data:`MAX_TASKS` images). Rows come
    back in input order.
    """
    if retries < 0:
        raise ValueError(f"retries: expected >= 0, got {retries}")
    ray = _require_ray()  # before plan_run creates the output folder
    plan = plan_run(inputs, out, gt=gt, fast=fast, L=L, threshold=threshold, labels=labels, overlay=overlay,
                    resume=resume, limit=limit, report=report)
    started = connect(address)
    try:
        spec = plan_actors(ray.cluster_resources(), actors, cpus_per_actor, gpus_per_actor)
        refiner_kwargs = {"device": "cuda" if spec.gpus > 0 else "cpu", "weights": weights, "engine": engine,
                          "batch_size": batch_size, "precision": precision, "backend": backend,
                          "second_pass_iou": second_pass_iou, "local_step": local_step}
        return _run(ray, plan, spec, refiner_kwargs, refiner_factory, retries, progress, on_row)
    finally:
        if started:
            ray.shutdown()


def _run(ray: Any, plan: RunPlan, spec: ActorSpec, refiner_kwargs: dict[str, Any],
         factory: Callable[..., Any] | None, retries: int, progress: bool,
         on_row: Callable[[Row], None] | None) -> Summary:
    jobs = plan.jobs
    acc = new_accumulators()
    rows: dict[int, Row] = {}
    metrics: dict[int, str] = {}
    t0 = time.perf_counter()
    interrupted = finished = False
    ctx = ray.data.DataContext.get_current()
    ctx.max_errored_blocks = -1  # a job whose actor died on every try is reported below, not fatal to the run
    if not progress:
        ctx.enable_progress_bars = False
    bar = tqdm(total=len(jobs), unit="img", desc="refine (ray)", disable=not progress, dynamic_ncols=True)
    try:
        ds = ray.data.from_items([_job_record(i, j) for i, j in enumerate(jobs)],
                                 override_num_blocks=max(1, min(len(jobs), MAX_TASKS)))
        with warnings.catch_warnings():  # Ray 2.5x deprecates remote args in favour of nothing yet
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(
                RefineActor, batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=spec.actors, max_tasks_in_flight_per_actor=1),
                num_cpus=spec.cpus, num_gpus=spec.gpus or None,
                fn_constructor_kwargs={"refiner_kwargs": refiner_kwargs, "opts": dataclasses.asdict(plan.opts),
                                       "input_dirs": [str(d) for d in plan.guard.input_dirs],
                                       "threads": spec.threads, "factory": factory},
                max_restarts=-1, max_task_retries=retries)
        for batch in ds.iter_batches(batch_size=1, batch_format="numpy"):
            for index, row_json, metrics_json in zip(batch["index"], batch["row"], batch["metrics"], strict=True):
                row = Row(**json.loads(str(row_json)))
                rows[int(index)] = row
                metrics[int(index)] = str(metrics_json)
                log_failure(row, jobs[int(index)])
                if on_row is not None:
                    on_row(row)
                bar.update(1)
        for i, job in enumerate(jobs):
            if i not in rows:  # its actor died on every try
                rows[i] = job_row(job, f"worker process died on every one of {retries + 1} tries")
                log_failure(rows[i], job)
        finished = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        bar.close()
        clean_temps(plan.out)  # temporary files of actors that were killed mid-write
        for i in sorted(metrics):  # in input order, so sums (and the summary) equal the plain run's exactly
            for k, state in json.loads(metrics[i]).items():
                acc[k].merge(state)
        ordered = [rows[i] for i in sorted(rows)]
        summary = finish_run(plan, ordered, acc, time.perf_counter() - t0, interrupted, finished)
    return summary

