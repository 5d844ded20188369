"""Training under torch.distributed (gloo on the CPU, 2 processes): one DDP step's gradients equal
one process's on the same global batch; 30 nerf training steps on 2 ranks end with one process's
weights (the ranks draw one process's random stream); a rank killed mid-training stops the
``torchrun`` job, and the next run resumes from the checkpoint and writes its outputs once. (PSNR
of a 2-process run against one process: ``bench/distributed.py``, too slow for CI.)"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pipeline.models.nerf.model import default_aabb
from pipeline.models.idr import io as idr_io
from pipeline.models.idr.cameras import PoseCorrections
from pipeline.models.sdf import io as sdf_io
from pipeline.models.sdf.model import SDFModelConfig
from pipeline.runner.workspace import Workspace, running_owner
from pipeline.training import distributed
from pipeline.training import nerf as nerf_training
from pipeline.training.common import settings_from
from pipeline.training.nerf import NeRFTrainSettings, step_loss
from pipeline.training.nerf_data import PixelData
from pipeline.training import sdf as sdf_training
from pipeline.training import idr as idr_training
from pipeline.training.idr_data import MaskOptions, RayBank, load_masks, load_views
from pipeline.training.sdf import SDFTrainSettings
from pipeline.training.sdf_data import PixelRays, SurfaceAnchors, full_masks
from tests.scenes import write_ball_workspace
from tests.tiny_configs import build_nerf_model, tiny_idr_config, tiny_nerf_config, tiny_sdf_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_and_batch(n: int = 96, miss_from: int | None = None):
    """The tiny NeRF (seeded) and a fixed global batch: rays from a sphere of radius 2.5 towards the
    box (from ray ``miss_from`` on, away from it: no samples), random target colours."""
    cfg = tiny_nerf_config()
    torch.manual_seed(0)
    model = build_nerf_model(cfg, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    g = torch.Generator().manual_seed(1)
    rays_o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 2.5
    rays_d = torch.nn.functional.normalize(0.3 * torch.randn(n, 3, generator=g) - rays_o, dim=-1)
    if miss_from is not None:
        rays_d[miss_from:] = torch.nn.functional.normalize(rays_o[miss_from:], dim=-1)
    target = torch.rand(n, 3, generator=g)
    return model, (rays_o, rays_d, target), settings_from(NeRFTrainSettings, cfg)


def _loss_and_grads(model, batch, settings, forward=step_loss):
    loss, out, _ = forward(model, *batch, None, settings, torch.Generator(), 10 ** 9, False, torch.device("cpu"),
                           perturb=False)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _grad_worker(rank: int, world: int, port: int, out: str, cases: list[tuple[int, bool]]) -> None:
    _join_group(rank, world, port)
    assert distributed.world_size() == world
    for split, miss in cases:
        model, batch, settings = _model_and_batch(miss_from=split if miss else None)
        if rank > 0:  # another start: DDP must broadcast rank 0's weights
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        bounds = [0, split, len(batch[0])]
        shard = tuple(t[bounds[rank]:bounds[rank + 1]] for t in batch)
        grads = _loss_and_grads(model, shard, settings, distributed.ddp_step(step_loss, [model]))
        torch.save(grads, Path(out) / f"grads{split}{miss}-{rank}.pt")
    _leave_group()


def test_ddp_gradients_equal_one_process_on_the_global_batch(tmp_path):
    # equal halves; 40 + 56 rays (each rank's mean rescaled); rank 1's rays all miss the box (no
    # sample: its loss holds no field parameter, yet DDP must reduce them all)
    cases = [(48, False), (40, False), (48, True)]
    mp.spawn(_grad_worker, args=(2, free_port(), str(tmp_path), cases), nprocs=2, join=True)
    for split, miss in cases:
        model, batch, settings = _model_and_batch(miss_from=split if miss else None)
        expected = _loss_and_grads(model, batch, settings)
        for rank in range(2):
            got = torch.load(tmp_path / f"grads{split}{miss}-{rank}.pt")
            assert got.keys() == expected.keys()
            for name, g in expected.items():
                assert g.abs().max() > 0, name  # every parameter takes part
                torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6 * float(g.abs().max()),
                                           msg=f"{name}, rays split {split} + {96 - split}")


def _leave_group() -> None:
    """Both ranks leave together: a rank that tears gloo down while its peer is still in its last
    collective aborts at exit now and then ("terminate called without an active exception")."""
    distributed.barrier()
    distributed.cleanup()


def _join_group(rank: int, world: int, port: int) -> None:
    """Rank ``rank`` of a gloo group of ``world`` processes on this machine (world 1: one process,
    no group), on one thread."""
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
        assert distributed.init_from_env()
    torch.set_num_threads(1)


def _one_process_then_two_ranks(tmp_path: Path, worker, prefix: str, steps: int) -> tuple[dict, list[dict]]:
    """``worker`` trains the tiny ball scene for ``steps`` steps in this process, then on 2 ranks;
    -> (the one process's saved results, each rank's)."""
    write_ball_workspace(tmp_path, views=6, size=16)
    worker(0, 1, 0, str(tmp_path), steps)
    mp.spawn(worker, args=(2, free_port(), str(tmp_path), steps), nprocs=2, join=True)
    alone = torch.load(tmp_path / f"{prefix}-1-0.pt", weights_only=False)
    ranks = [torch.load(tmp_path / f"{prefix}-2-{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["stats"]["steps"] == alone["stats"]["steps"] == steps
    return alone, ranks


def _train_worker(rank: int, world: int, port: int, root: str, steps: int) -> None:
    """nerf training of the tiny ball scene: one process (world 1) or one rank of ``world``."""
    _join_group(rank, world, port)
    scene = Workspace(Path(root) / "ws").load_scene()
    # random backgrounds, an error map and the edge rays: every random draw of the loop takes part
    # (2048 samples a step with at least 256 rays: the batch often meets its sample cap, which
    # the ranks must cut where one process does)
    cfg = tiny_nerf_config(max_steps=steps, error_fraction=0.3, edge_fraction=0.2, checkpoint_every=0,
                           initial_rays=101)
    data = PixelData(scene, scene.split("train"), torch.device("cpu"), True, cfg.edge_fraction, cfg.edge_width)
    torch.manual_seed(0)
    model = build_nerf_model(cfg, default_aabb(scene.bounds, cfg.scene_radius))
    stats = nerf_training.train(model, data, settings_from(NeRFTrainSettings, cfg), torch.device("cpu"), None)
    torch.save({"model": model.state_dict(), "error": data.pixel_error.clone(), "stats": stats},
               Path(root) / f"nerf-{world}-{rank}.pt")
    _leave_group()


def test_ddp_training_draws_and_trains_as_one_process(tmp_path):
    """Two ranks draw each step's whole batch from one stream and render half of it each: after
    30 steps (occupancy updates, error map, random backgrounds, an odd ray count, batches cut by
    the sample cap) both ranks hold the one-process run's weights and error map, up to the order
    of float sums."""
    alone, ranks = _one_process_then_two_ranks(tmp_path, _train_worker, "nerf", 30)
    assert ranks[0]["stats"]["samples"] == alone["stats"]["samples"]  # the same samples marched
    for name, want in alone["model"].items():  # weights, and buffers: the occupancy grid, its density
        for r in ranks:
            if want.is_floating_point():
                torch.testing.assert_close(r["model"][name], want, rtol=1e-3,
                                           atol=1e-4 * float(want.abs().max()) + 1e-7, msg=name)
            else:
                assert torch.equal(r["model"][name], want), name
    for r in ranks:
        torch.testing.assert_close(r["error"], alone["error"], rtol=1e-2, atol=1e-3)


def _assert_nearly_equal(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """Weights of two runs that differ only in the order of float sums: a hash-table entry whose
    gradient is a near-cancelling sum may take another Adam step when the order changes, so a few
    such entries may differ, by a little; everything else agrees closely."""
    if not want.is_floating_point():
        assert torch.equal(got, want), name
        return
    scale = float(want.abs().max()) + 1e-7
    off = (got - want).abs()
    assert float((off > 1e-4 * scale).float().mean()) < 1e-3, name
    assert float(off.max()) < 1e-2 * scale, name


def _sdf_train_worker(rank: int, world: int, port: int, root: str, steps: int) -> None:
    """sdf training of the tiny ball scene: one process (world 1) or one rank of ``world``."""
    _join_group(rank, world, port)
    scene = Workspace(Path(root) / "ws").load_scene()
    train_idx = scene.split("train")
    # every random draw of a step takes part: the error map, the eikonal points on the rays and in
    # the ball, the curvature jitter, sparse points and the rays that saw them (odd counts: the
    # ranks' shares differ)
    cfg = tiny_sdf_config(f"max_steps={steps}", "max_time_s=0", "batch_rays=67", "error_sampling=0.3",
                          "curvature_weight=0.05", "eikonal_ray_points=101", "eikonal_points=41",
                          "points_per_step=33", "depth_rays=21", "checkpoint_every_s=0", "sampling.grid_start=0.3",
                          "sampling.grid_update_every=4")
    views = load_views(scene, train_idx, full_masks(scene, train_idx), 1)
    g = torch.Generator().manual_seed(5)
    points = 0.4 * torch.nn.functional.normalize(torch.randn(40, 3, generator=g), dim=-1)
    centres = views.cameras.c2w[:, :3, 3].float()
    origins = centres.repeat_interleave(len(points), 0)
    towards = points.repeat(len(centres), 1) - origins
    anchors = SurfaceAnchors(points, origins, towards / towards.norm(dim=-1, keepdim=True), towards.norm(dim=-1))
    torch.manual_seed(0)
    model = sdf_io.build_model(SDFModelConfig(cfg.field, dataclasses.replace(cfg.sampling, spacing="linear"), cfg.sdf,
                                              cfg.renderer, cfg.background_field, cfg.sample_gradients), (1.0, 1.0, 1.0))
    rays = PixelRays(views)
    settings = settings_from(SDFTrainSettings, cfg, resume_config=None)
    resume_dir = Path(root) / f"resume-{world}-{rank}"
    resume_dir.mkdir()
    stats = sdf_training.train(model, views.cameras, rays, settings, resume_dir, logging.getLogger("test"),
                               anchors=anchors)
    torch.save({"model": model.state_dict(), "error": rays.pixel_error.clone(), "stats": stats},
               Path(root) / f"sdf-{world}-{rank}.pt")
    _leave_group()


def test_ddp_sdf_training_draws_and_trains_as_one_process(tmp_path):
    """The sdf stage's loop on 2 ranks: each draws every random number of the step (pixels, jitter,
    eikonal and sparse points, depth rays, curvature jitter) as one process and computes its rows;
    the means are the global batch's. After 12 steps (the skipping grid on from step 4) both ranks
    hold one process's weights and error map, up to the order of float sums."""
    alone, ranks = _one_process_then_two_ranks(tmp_path, _sdf_train_worker, "sdf", 12)
    assert ranks[0]["stats"]["samples"] == alone["stats"]["samples"]
    assert alone["stats"]["last_step"]["curvature"] > 0 and alone["stats"]["last_step"]["depth"] > 0
    for name, want in alone["model"].items():
        for r in ranks:
            _assert_nearly_equal(r["model"][name], want, name)
    for r in ranks:
        torch.testing.assert_close(r["error"].float(), alone["error"].float(), rtol=1e-2, atol=1e-3)


def _idr_train_worker(rank: int, world: int, port: int, root: str, steps: int) -> None:
    """idr training of the tiny ball scene (alpha masks, trainable cameras, the smoothness term):
    one process (world 1) or one rank of ``world``."""
    _join_group(rank, world, port)
    scene = Workspace(Path(root) / "ws").load_scene()
    train_idx = scene.split("train")
    cfg = tiny_idr_config(**{"max_steps": steps, "max_time_s": 0, "batch_rays": 67, "eikonal_points": 41,
                             "train_cameras": "true", "loss.smoothness_weight": 0.05, "checkpoint_every_s": 0})
    views = load_views(scene, train_idx, load_masks(scene, train_idx, MaskOptions("auto", "", 0.2, "black")), 1)
    bank = RayBank(views, cfg.tracing.radius, cfg.mask_fraction, cfg.edge_fraction, cfg.edge_width)
    torch.manual_seed(0)
    model = idr_io.build_model(cfg.sdf, idr_training.training_renderer(cfg.renderer, True, cfg.camera_coarse_to_fine),
                               cfg.tracing, (1.0, 1.0, 1.0))
    corrections = PoseCorrections(len(train_idx))
    settings = settings_from(idr_training.TrainSettings, cfg, resume_config=None)
    resume_dir = Path(root) / f"idr-resume-{world}-{rank}"
    resume_dir.mkdir()
    stats = idr_training.train(model, views.cameras, corrections, bank, cfg.loss, settings, resume_dir,
                               logging.getLogger("test"))
    torch.save({"model": model.state_dict(), "corrections": corrections.state_dict(), "stats": stats},
               Path(root) / f"idr-{world}-{rank}.pt")
    _leave_group()


def test_ddp_idr_training_draws_and_trains_as_one_process(tmp_path):
    """The idr stage's loop on 2 ranks: each draws the step's whole batch, eikonal points and
    smoothness jitter as one process and computes its rows; after 12 steps both ranks hold one
    process's weights and camera corrections, up to the order of float sums."""
    alone, ranks = _one_process_then_two_ranks(tmp_path, _idr_train_worker, "idr", 12)
    assert alone["stats"]["last_step"]["smoothness"] > 0
    for part in ("model", "corrections"):
        for name, want in alone[part].items():
            for r in ranks:
                _assert_nearly_equal(r[part][name], want, f"{part}.{name}")


NERF_ARGS = ["samples_per_batch=2048", "initial_rays=512", "max_rays=4096", "model.grid.levels=6",
             "model.grid.log2_table_size=12", "model.grid.finest_resolution=64", "model.width=16",
             "model.occupancy_resolution=16", "occupancy_warmup_steps=16", "lpips=false", "cpu_threads=1"]


def _env() -> dict:
    env = dict(os.environ, CI="true", RECON_QUIET="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def torchrun(workspace: Path, *args: str, nproc: int = 2, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(free_port()), str(ROOT / "run.py"), "nerf", "--workspace", str(workspace), *NERF_ARGS, *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def _rank_pid(parent: int, rank: int) -> int | None:
    """The process id of torchrun's worker of ``rank`` (a child of ``parent`` with RANK=rank)."""
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(child)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers through /proc (Linux)")
def test_killed_rank_stops_the_job_and_the_next_run_resumes_writing_once(tmp_path):
    """torchrun --nproc_per_node 2: kill -9 rank 1 after a checkpoint; the job fails, publishes
    nothing; the same command resumes from rank 0's checkpoint, and its outputs are written once."""
    ws = write_ball_workspace(tmp_path, views=6, size=16).root
    ckpt = ws / ".resume" / "nerf" / "checkpoint.pt"
    args = ["max_steps=100000", "checkpoint_every=20", "checkpoint_every_s=0"]
    run = torchrun(ws, *args, "max_time_s=0")
    try:
        deadline = time.time() + 90
        while not ckpt.exists() and run.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert ckpt.exists(), run.communicate(timeout=30)[0] if run.poll() is not None else "no checkpoint in 90 s"
        victim = _rank_pid(run.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        output, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0, output
    assert not (ws / "nerf").exists()  # nothing published; a half-written folder has no live owner
    assert all(running_owner(p) is None for p in (ws / ".tmp").iterdir())
    state = torch.load(ckpt, weights_only=False)
    saved, trained = state["step"], state["elapsed"]
    assert saved >= 20
    # resumed with a time budget: the ranks must agree on when it runs out (or the job would hang)
    budget = trained + 1.0
    again = torchrun(ws, *args, f"max_time_s={budget}")
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 0, output
    log = (ws / "logs" / "run.log").read_text()
    resumed = re.findall(r"nerf: resuming from step (\d+)", log)
    assert resumed == [str(saved)], log  # logged by rank 0 only
    metrics = json.loads((ws / "nerf" / "metrics.json").read_text())
    assert metrics["steps"] > saved and budget <= metrics["train_time_s"] < budget + 0.5 and metrics["processes"] == 2
    # outputs once: one report on stdout, one published folder, no leftovers, one curve
    assert output.count("nerf: outputs in") == 1, output
    assert not any((ws / ".tmp").iterdir()) and not (ws / ".resume" / "nerf").exists()
    assert log.count("nerf: done in") == 1 and log.count("DistributedDataParallel on 2 processes (gloo)") == 2
    steps = [json.loads(line)["step"] for line in (ws / "nerf" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == metrics["steps"]
