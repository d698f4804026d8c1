"""Run under `torchrun --nproc_per_node 2 tests/ddp_worker.py <check> <out dir>` by tests/test_ddp.py:
each rank writes what it saw to `<out dir>/<check>-<rank>.json` (gloo on CPU, no SFT model needed).

  kto    KTO's batch loss on this rank's own examples (a seeded random tiny Llama): the z0 it used
         and the z0 of its examples alone
  cache  one cache entry asked for by every rank: which ranks built it, and whether each found it
  whiten PPO's whitening of this rank's own advantages with the statistics of both ranks' rollouts:
         the statistics it used, its own batch's mean, its inputs and outputs, and its block of a
         rollout batch
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def kto_check(rank: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignbench.losses.kto import kto_loss
    from alignbench.training.offline import kto_batch_loss

    torch.manual_seed(0)  # the same model on every rank
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own examples: different local z0
    b, t = 4, 10
    ids = torch.randint(1, 40, (b, t), generator=gen)
    kl_ids = torch.randint(1, 40, (b, t), generator=gen)
    mask = torch.ones(b, t, dtype=torch.long)
    resp = torch.zeros(b, t, dtype=torch.long)
    resp[:, 5:] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "response_mask": resp, "kl_input_ids": kl_ids,
             "kl_attention_mask": mask, "kl_response_mask": resp,
             "desirable": torch.tensor([True, False, True, False])}
    ref = {"logps": torch.full((b,), -20.0), "kl_logps": torch.full((b,), -40.0 - 10 * rank)}
    loss = lambda *a, mean_across_processes=None: kto_loss(*a, beta=0.1, mean_across_processes=mean_across_processes)  # noqa: E731
    _, metrics, _ = kto_batch_loss(loss, model, batch, ref, torch.device("cpu"))
    _, local_metrics, _ = kto_batch_loss(lambda *a, mean_across_processes=None: kto_loss(*a, beta=0.1), model,
                                         batch, ref, torch.device("cpu"))
    return {"z0": metrics()["train/kl_z0"], "local_z0": local_metrics()["train/kl_z0"]}


def whiten_check(rank: int) -> dict:
    from alignbench.losses.ppo import whiten, whitening_stats
    from alignbench.training.distributed import contiguous_share, sum_tensor_over_processes

    gen = torch.Generator().manual_seed(200 + rank)  # each rank its own rollout, on another scale
    x = torch.randn(3, 5, generator=gen) * (1 + 2 * rank) + 3 * rank
    mask = (torch.rand(3, 5, generator=gen) > 0.3).long()
    mean, var = whitening_stats(x, mask, sum_tensor_over_processes)
    local_mean, _ = whitening_stats(x, mask)
    return {"mean": mean.item(), "var": var.item(), "local_mean": local_mean.item(), "x": x.tolist(),
            "mask": mask.tolist(), "whitened": whiten(x, mask, total=sum_tensor_over_processes).tolist(),
            "block": contiguous_share(list(range(8)))}


def cache_check(rank: int, out: Path) -> dict:
    from alignbench import cache

    def write(path: Path) -> None:
        (path / "value.txt").write_text(str(rank))
        with open(out / "cache-builds.txt", "a") as fh:
            fh.write(f"{rank}\n")

    entry, hit = cache.cached(out / "cache", "check", "key", write)
    return {"value": (entry / "value.txt").read_text(), "hit": hit}


def main() -> None:
    check, out = sys.argv[1], Path(sys.argv[2])
    from alignbench.training.distributed import end_processes, start_processes

    state = start_processes("cpu")
    rank = state.process_index
    result = {"kto": lambda: kto_check(rank), "whiten": lambda: whiten_check(rank),
              "cache": lambda: cache_check(rank, out)}[check]()
    result.update(rank=rank, processes=state.num_processes, backend=torch.distributed.get_backend())
    (out / f"{check}-{rank}.json").write_text(json.dumps(result))
    end_processes()


if __name__ == "__main__":
    main()
