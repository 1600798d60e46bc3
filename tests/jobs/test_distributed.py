"""The folder tool on a local Ray instance: same bytes and report rows as the plain run, a killed actor's job
retried, bad images reported per image. Actors use the bundled default refiner (real weights) at a small L
(the generated photos are at most 96 px long: the default L = 900 would upsample each to 900 px for the global
step and spend most of a test's time there, not in Ray)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest
import torch
from folder_fixtures import no_temp_files, original_layout, read_csv, tree_hash

from cascadepsp import Refiner
from cascadepsp.cli import main
from cascadepsp.io import atomic, images
from cascadepsp.jobs.distributed import ActorSpec, plan_actors, refine_dataset
from cascadepsp.jobs.folder import refine_folder


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with 2 CPUs for the module (refine_dataset joins it and leaves it running).
    Tests without this fixture (the actor plan) run without Ray installed."""
    ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors cannot import this test module
    yield
    ray.shutdown()


@pytest.fixture
def folder_with_a_bad_image(tmp_path) -> Path:
    src = tmp_path / "in"
    original_layout(src, n=4)
    (src / "broken_im.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    atomic.write_atomic(src / "broken_seg.png", (src / "img00_seg.png").read_bytes())
    return src


def rows_without_timing(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_csv(path)]


L = 96  # the long side of the largest generated photo: no upsampling, one window


class CrashOnce:
    """A Refiner whose process dies (os._exit) in its second refinement, once per test (a marker file says so)."""

    def __init__(self, marker: str, **kwargs) -> None:
        self.inner = Refiner(**kwargs)
        self.device = self.inner.device
        self.marker = Path(marker)
        self.calls = 0

    def refine(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 2:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os._exit(1)  # a hard kill: no exception, no cleanup, mid-run
        return self.inner.refine(*args, **kwargs)


def test_ray_run_matches_the_plain_run_byte_for_byte(local_ray, folder_with_a_bad_image, tmp_path, capsys):
    src = folder_with_a_bad_image
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 1 thread in the plain run = 1 CPU per actor: the same bytes
    try:
        plain = refine_folder([src], tmp_path / "plain", refiner=Refiner(device="cpu"), L=L,
                              report=tmp_path / "plain.csv", progress=False)
    finally:
        torch.set_num_threads(n)
    dist = refine_dataset([src], tmp_path / "ray", actors=2, cpus_per_actor=1, L=L, report=tmp_path / "ray.csv",
                          progress=False)
    assert dist.count("done") == plain.count("done") == 4 and dist.count("failed") == 1
    assert tree_hash(tmp_path / "plain") == tree_hash(tmp_path / "ray") and len(tree_hash(tmp_path / "ray")) == 4
    ray_rows = rows_without_timing(tmp_path / "ray.csv")
    for r in ray_rows:
        r["output"] = r["output"].replace("/ray/", "/plain/")
    assert ray_rows == rows_without_timing(tmp_path / "plain.csv") and len(ray_rows) == 5
    [bad] = [r for r in ray_rows if r["status"] == "failed"]
    assert bad["name"] == "broken" and bad["error"]
    # the same dataset-level scores as the plain run, to the last bit
    assert dist.metrics == plain.metrics and dist.metrics["refined"]["n_images"] == 4
    # the command line as a user types it, on the same output folder: finished images are skipped (resume), the
    # broken one is tried again and fails again
    before = tree_hash(tmp_path / "ray")
    rc = main(["refine", str(src), "--out", str(tmp_path / "ray"), "--ray", "--ray-actors", "1",
               "--ray-cpus-per-actor", "1", "--L", str(L), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1 and "done 0, skipped 4, failed 1 of 5" in out and "failed: broken" in out
    assert tree_hash(tmp_path / "ray") == before


def test_actor_plan_from_cluster_resources():
    assert plan_actors({"CPU": 2.0}) == ActorSpec(actors=1, cpus=2.0, gpus=0.0)
    assert plan_actors({"CPU": 2.0}, cpus_per_actor=1) == ActorSpec(actors=2, cpus=1, gpus=0.0)
    assert plan_actors({"CPU": 16.0, "GPU": 4.0}) == ActorSpec(actors=4, cpus=1.0, gpus=1.0)
    assert plan_actors({"CPU": 16.0, "GPU": 4.0}, gpus_per_actor=0.5).actors == 8
    assert plan_actors({"CPU": 1.0}).threads == 1
    with pytest.raises(ValueError, match="GPU"):
        plan_actors({"CPU": 8.0}, gpus_per_actor=1)
    with pytest.raises(ValueError, match="no actor fits"):
        plan_actors({"CPU": 1.0}, cpus_per_actor=2)


class CrashOnceAndOnSize(CrashOnce):
    """Dies once in its second refinement (a marker file says so) and on every try of the images of one size (a
    poison image that kills its worker, e.g. by OOM)."""

    def __init__(self, marker: str, size_hw: tuple[int, int], **kwargs) -> None:
        super().__init__(marker, **kwargs)
        self.size_hw = tuple(size_hw)

    def refine(self, image, *args, **kwargs):
        if image.shape[:2] == self.size_hw:
            os._exit(1)
        return super().refine(image, *args, **kwargs)


def test_killed_actors_are_restarted_and_only_an_image_that_kills_every_try_fails(local_ray, tmp_path):
    """One run for both failure kinds (an actor start-up is most of a test's time): a job whose actor died once is
    retried and done; an image that kills its worker on every try is reported and the run completes."""
    src = tmp_path / "in"
    original_layout(src, n=7)  # part2/img04 is the only 50x50 one
    # 2 tries each (retries=1), one actor: every good image must be done although the actor died 3 times (one
    # task at a time per actor charges a death only to the image being refined; this run also passed before that
    # setting, so it does not prove it). 6 good images over at most 3 actor lives before the once-crash (2
    # poison deaths): one life refines two, so the once-crash surely happens
    marker = tmp_path / "crashed"
    summary = refine_dataset([src], tmp_path / "out", actors=1, cpus_per_actor=1, L=L, retries=1,
                             report=tmp_path / "r.csv", progress=False,
                             refiner_factory=functools.partial(CrashOnceAndOnSize, str(marker), (50, 50)))
    assert marker.exists()  # an actor process did die once mid-run on a good image
    statuses = {r.name: r.status for r in summary.rows}
    assert statuses == {**{f"img0{i}": "done" for i in (0, 1, 2, 3, 5, 6)}, "part2/img04": "failed"}
    [poison] = [r for r in summary.rows if r.status == "failed"]
    assert "died on every one of 2 tries" in poison.error
    outputs = sorted((tmp_path / "out").rglob("*_mask.png"))
    assert len(outputs) == 6 and all(images.is_valid_image(p) for p in outputs)
    assert no_temp_files(tmp_path / "out")
    assert {r["name"]: r["status"] for r in read_csv(tmp_path / "r.csv")} == statuses
