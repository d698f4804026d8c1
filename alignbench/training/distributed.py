"""One trial on several processes (DDP under `torchrun --nproc_per_node N` or `accelerate launch
--num_processes N`): gloo on CPU, nccl on CUDA. Without a launcher every helper here is the
one-process identity, so the loops call them unconditionally.

Rank 0 alone records (MLflow run, result line, checkpoints, the saved policy, cache entries) and
evaluates; the other ranks train their shard of every batch and wait for what rank 0 shares.
"""

from __future__ import annotations

import os

import torch

from alignbench.config import ConfigError


def launched_processes() -> int:
    """The process count a launcher started (1 without one): WORLD_SIZE, as torchrun and accelerate set it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start_processes(device: str):
    """Accelerate's process state, made once per process before anything else reads it: the group
    is initialised here (gloo when `device=` resolves to the CPU, nccl on CUDA). `cpu=True` is what
    makes accelerate pick gloo under a launcher; without `cpu` it finds no accelerator on a
    CPU-only machine and leaves every process a lone main process."""
    from accelerate import PartialState

    from alignbench.models.loading import pick_device

    return PartialState(cpu=pick_device(device).type == "cpu")


def end_processes() -> None:
    """Every rank leaves together and the group is taken down (no-op without a launcher): a rank that
    exits while another still talks to it makes gloo abort the other ("terminate called without an
    active exception", seen on a loaded machine), and a group left up makes torch warn at exit."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def process_count() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def process_index() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def contiguous_share(items: list) -> list:
    """This process's contiguous block of `items` (equal blocks; `check_batch_split` makes them so): an
    online method's share of each rollout batch, RLOO's k samples of a prompt kept on one process."""
    share = len(items) // process_count()
    return items[process_index() * share:(process_index() + 1) * share]


def is_main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def check_batch_split(batch_size: int, online=None) -> None:
    """Each process takes an equal share of every global batch, so the averaged gradient is the whole
    batch's: `train.batch_size` (and an online method's minibatch, `online`: its `OnlineSettings`)
    must divide by the process count (one line otherwise). Each process samples its own block of
    every rollout batch: RLOO's block must hold whole groups of `rloo_k` samples."""
    n = launched_processes()
    if n > 1 and batch_size % n:
        raise ConfigError(f"train.batch_size={batch_size}: must divide by the {n} processes "
                          f"(each takes an equal share of every batch)")
    m = online
    if n == 1 or m is None:
        return
    if m.rollout_batch_size % n or max(1, m.rollout_batch_size // m.n_minibatches) % n:
        raise ConfigError(f"method.rollout_batch_size={m.rollout_batch_size} / method.n_minibatches={m.n_minibatches}: "
                          f"the rollout batch and each minibatch must divide by the {n} processes")
    if m.rloo_k and (m.rollout_batch_size // n) % m.rloo_k:
        raise ConfigError(f"method.rollout_batch_size={m.rollout_batch_size}: each of the {n} processes samples "
                          f"{m.rollout_batch_size // n} of it, which must be a multiple of method.rloo_k={m.rloo_k}")


def threads_per_process(threads: int | None) -> int | None:
    """`threads=` is the trial's: split across its processes on this host (at least one each).
    Null: the host's cores split the same way when several processes share it, else torch's default."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if threads is None:
        return max(1, (os.cpu_count() or 1) // local) if local > 1 else None
    return max(1, int(threads) // local)


def share_from_main(value):
    """Rank 0's `value` on every rank (the others pass anything); a barrier too."""
    if process_count() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(work):
    """`work()` on rank 0 alone, its value (or the exception it raised: a one-line error, a sweep's
    pruning) on every rank, so no rank waits for a result that never comes."""
    if process_count() == 1:
        return work()
    outcome = (None, None)
    if is_main():
        try:
            outcome = (work(), None)
        except Exception as exc:
            share_from_main((None, exc))
            raise
    value, error = share_from_main(outcome)
    if error is not None:
        raise error
    return value


def _collective_device() -> torch.device:
    """Where a collective's tensors live: nccl reduces only CUDA tensors, gloo CPU ones."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_processes(metrics: dict) -> dict:
    """Each float metric averaged over the processes (equal shares: the whole batch's mean)."""
    if process_count() == 1 or not metrics:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(values)
    return {k: v / process_count() for k, v in zip(keys, values.tolist())}


def sum_tensor_over_processes(sums: torch.Tensor) -> torch.Tensor:
    """`sums` added up element-wise over the processes (in float64), in its own dtype and device: each
    process's batch statistics become the whole batch's. Itself on one process."""
    if process_count() == 1:
        return sums
    total = sums.detach().to(device=_collective_device(), dtype=torch.float64)
    torch.distributed.all_reduce(total)
    return total.to(device=sums.device, dtype=sums.dtype)


def sum_over_processes(value: int) -> int:
    if process_count() == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(total)
    return int(total.item())


def announce_trial(overrides: list[str] | None) -> None:
    """Rank 0 of a sweep worker under a launcher tells the other ranks the next trial's overrides
    (None: the sweep is over); they wait in `next_trial`. A no-op on one process."""
    if process_count() > 1:
        share_from_main(overrides)


def next_trial() -> list[str] | None:
    """On a rank other than 0: the overrides of the trial rank 0 is starting, or None at the end."""
    return share_from_main(None)
