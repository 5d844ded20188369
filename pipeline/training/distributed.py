"""Training on several processes with ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node N run.py nerf --workspace W`` starts N copies of the command, each with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address) in its environment.
:func:`init_from_env` joins them into one process group (NCCL on CUDA, each rank on
``cuda:LOCAL_RANK``; gloo on the CPU, or everywhere with ``RECON_DDP_BACKEND=gloo``). Without
those variables (or with ``WORLD_SIZE=1``) nothing is initialised and every
helper here is a no-op, so a plain ``python run.py ...`` behaves exactly as before.

How the training loops use it (``pipeline.training.nerf`` / ``idr`` / ``sdf``):

- every rank draws each step's whole batch from one generator (seeded ``seed`` on every rank, as
  one process), together with every random number of the step (the jitter a render draws per ray,
  eikonal and sparse points, curvature jitter), and computes its share of the rows
  (:func:`batch_rows`, :mod:`pipeline.models.components.batch_rows`). So the ranks draw exactly
  what one process draws, and a DDP run follows the one-process run of the same seed up to the
  order of float sums. Draws whose number depends on the render (sdf: the eikonal points picked
  among the batch's samples) are drawn over the global batch, whose counts the ranks share
  (:func:`all_gather_ints`). The ranks' per-ray errors are gathered (:func:`gather_rows`) so that
  every rank's error map is the one process's; in nerf every rank updates the occupancy grid with
  the same draws (rank 0's is then broadcast, :func:`broadcast_tensors_`);
- the loss is normalised so that DDP's average of the ranks' gradients is the gradient of the mean
  over the whole global batch (:func:`global_mean_scale`; idr and sdf: each term's sum over the
  rank's rows divided by the global count, times the world size);
- what decides control flow (the trained seconds for the time budget and the learning-rate
  schedule, checkpoint periods, the ray count steered to a sample budget) is agreed on by all ranks
  every step (:func:`all_reduce_sum`; rank 0's clock), so every rank runs the same steps and stops
  at the same one;
- only rank 0 writes: checkpoints, the training curve, progress bars, logs, the stage's outputs;
  a resumed run loads rank 0's checkpoint and broadcasts it (:func:`broadcast_object`), so on
  several machines only rank 0's workspace needs the ``.resume`` folder;
- a rank that dies makes torchrun stop the others (SIGTERM, taken here as a Ctrl-C: rank 0 saves
  its checkpoint on the way out, atomically); the next run resumes from it.

A resume gives every rank rank 0's random stream (and in nerf its error map). Each rank holds
its own copy of the training pixels.
"""
from __future__ import annotations

import atexit
import datetime
import inspect
import logging
import os
import signal
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from pipeline.models.components.batch_rows import BatchRows

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_state = {"initialised_here": False}


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher setting the same variables)."""
    return all(k in os.environ for k in ENV_KEYS) and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(timeout_s: float = 1800.0) -> bool:
    """Join the process group torchrun describes in the environment (idempotent); returns whether
    this process is one of several. ``timeout_s``: how long a collective waits for a peer (rank 0
    alone evaluates after training, so the others do not wait on it in a collective)."""
    if is_distributed():
        return True
    if not launched_by_torchrun():
        return False
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() and os.environ.get("RECON_DDP_BACKEND", "") != "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    _state["initialised_here"] = True
    atexit.register(cleanup)
    # torchrun stops the workers with SIGTERM (Ctrl-C on it, or a rank that failed): take it as a
    # Ctrl-C, so that rank 0 saves its checkpoint on the way out as a single process would
    signal.signal(signal.SIGTERM, _terminate)
    if dist.get_rank() != 0:
        # one voice: ranks > 0 log warnings and errors only, and show no progress bars
        logging.getLogger("recon").setLevel(logging.WARNING)
        os.environ["RECON_QUIET"] = "1"
    return True


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise KeyboardInterrupt(f"signal {signum} from torchrun")


def cleanup() -> None:
    """Leave the process group (at exit; safe to call twice)."""
    if _state["initialised_here"] and dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer is gone already: nothing left to tear down cleanly
            pass
    _state["initialised_here"] = False


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def is_main() -> bool:
    """Whether this process writes (rank 0, or the only process)."""
    return rank() == 0


def device_for(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` under DDP."""
    if is_distributed() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def _comm_device() -> torch.device:
    # NCCL moves CUDA tensors only; gloo CPU tensors
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; a checkpoint's state dict, a decision)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def broadcast_tensors_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values, in place (through a copy:
    ``copy_`` bumps the tensor's version, which caches keyed on it, like the occupancy grid's box,
    rely on; bool tensors travel as uint8)."""
    if not is_distributed():
        return
    device = _comm_device()
    for t in tensors:
        buf = t.detach().to(device, torch.uint8 if t.dtype == torch.bool else t.dtype, copy=True)
        dist.broadcast(buf, src)
        t.copy_(buf)


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """The sums over ranks of ``values`` (float64), in one collective."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def from_main(value: float) -> float:
    """Rank 0's ``value`` on every rank (one small all-reduce): the trained seconds that decide the
    time budget, the schedules and checkpoints, so that all ranks decide alike."""
    if not is_distributed():
        return value
    return all_reduce_sum([value if is_main() else 0.0])[0]


def shard(count: int) -> int:
    """This rank's share of a global batch of ``count`` (the same on every rank; at least 1)."""
    return max(1, count // world_size())


def batch_rows(total: int) -> Optional[BatchRows]:
    """This rank's rows of a global batch of ``total`` rays (None in one process: all of them)."""
    if not is_distributed():
        return None
    return BatchRows.of_rank(total, rank(), world_size())


def samples_before(count: int) -> int:
    """The sum of ``count`` over the ranks before this one (one all-gather): where this rank's rows
    of a global batch start in the batch's samples."""
    if not is_distributed():
        return 0
    counts = [torch.zeros(1, dtype=torch.int64, device=_comm_device()) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([count], dtype=torch.int64, device=_comm_device()))
    return int(sum(int(c) for c in counts[:rank()]))


def all_gather_ints(values: Sequence[int]) -> list[list[int]]:
    """Every rank's ``values`` (the same length on each), by rank, in one all-gather (one process:
    its own)."""
    if not is_distributed():
        return [[int(v) for v in values]]
    mine = torch.tensor([int(v) for v in values], dtype=torch.int64, device=_comm_device())
    parts = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(parts, mine)
    return [part.cpu().tolist() for part in parts]


def gather_rows(values: torch.Tensor, rows: BatchRows) -> torch.Tensor:
    """Every rank's per-ray ``values`` (r,) of its ``rows`` (r <= the rows' count: a render cut
    short by its sample budget keeps its first rays) -> (rows.total,) on every rank, NaN where a
    rank rendered no value. One all-gather (padded to the largest share)."""
    world = world_size()
    width = -(-rows.total // world)
    device = _comm_device()
    mine = torch.full((width,), float("nan"), dtype=torch.float32, device=device)
    mine[:values.shape[0]] = values.detach().float().to(device)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    shares = [BatchRows.of_rank(rows.total, k, world) for k in range(world)]  # in order, back to back
    return torch.cat([part[:s.stop - s.start] for part, s in zip(parts, shares)]).to(values.device)


def global_mean_scale(local_count: int) -> float:
    """The factor that turns a mean over this rank's ``local_count`` items into its share of the
    mean over all ranks' items, such that DDP's average of the gradients is the gradient of the
    global mean: ``world * local / total`` (1.0 when every rank has as many)."""
    if not is_distributed():
        return 1.0
    total = all_reduce_sum([local_count])[0]
    return world_size() * local_count / max(total, 1.0)


def global_mean_of_sum(local_sum: torch.Tensor, global_count: int) -> torch.Tensor:
    """This rank's share of a mean over all ranks' ``global_count`` items, from the sum over its own:
    ``local_sum * world / global_count``, so that DDP's average of the gradients is the gradient of
    the global mean (one process: the mean; a count of 0 gives 0)."""
    return local_sum * (world_size() / max(global_count, 1))


class _Step(nn.Module):
    """``fn(*args)`` as the forward of a module holding ``modules``, so that DDP hooks the gradients
    of their parameters (the models render through methods, not ``forward``)."""

    def __init__(self, fn: Callable, modules: Sequence[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def ddp_step(fn: Callable, modules: Sequence[Optional[nn.Module]], find_unused_parameters: bool = False) -> Callable:
    """``fn`` itself in one process; under DDP, ``fn`` run through a DistributedDataParallel
    wrapper of ``modules`` (their parameters are broadcast from rank 0 now, and the gradients of a
    ``backward`` of its result are averaged over ranks). ``fn`` must compute the loss itself (with
    :func:`touch_all`, so that every parameter gets a gradient on every rank);
    ``find_unused_parameters``: for a ``fn`` that leaves some parameters out of a step. Buffers are
    not synchronised before each step (the occupancy grid is broadcast where it changes)."""
    if not is_distributed():
        return fn
    modules = [m for m in modules if m is not None]
    wrapper = _Step(fn, modules)
    # device_ids None: the inputs stay as given (DDP would otherwise copy every argument to the device)
    kwargs = {"device_ids": None, "find_unused_parameters": find_unused_parameters}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:
        kwargs["forward_sync_buffers"] = False  # newer torch's name (buffers still synced once, now)
    else:
        kwargs["broadcast_buffers"] = False
    return nn.parallel.DistributedDataParallel(wrapper, **kwargs)


def touch_all(loss: torch.Tensor, modules: Sequence[Optional[nn.Module]], force: bool = False) -> torch.Tensor:
    """``loss`` made to depend on every parameter of ``modules`` (with zero weight) when it depends
    on none (an empty batch), or when ``force`` (a step that left some parameters out, e.g. no ray
    reached the field): under DDP every rank must reduce every parameter's gradient each step."""
    if not is_distributed() or (loss.requires_grad and not force):
        return loss
    zero = sum(p.sum() * 0.0 for m in modules if m is not None for p in m.parameters() if p.requires_grad)
    return loss + zero
