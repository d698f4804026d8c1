"""What a run keeps, through its tracker: the final policy (artifact `policy/`) and, with
`train.checkpoint_every=N`, a resumable checkpoint (artifact `checkpoint/step-XXXXXXXX/`).

`policy/` is what `save_pretrained` writes (safetensors): the LoRA adapter (peft) or the full
weights, with the tokenizer, so `from_pretrained` loads it.

A checkpoint holds the trainable parameters (safetensors), the optimiser and schedule states, the
RNG states (python, numpy, torch; CUDA when present), the step, the data position (batches drawn
from the loop's index stream), the loop's bookkeeping (eval history, seconds, tokens) and the
resolved config. Each one goes to a new folder, marked complete by a last upload, before the older
one is deleted: a kill during an upload leaves the previous complete checkpoint. A resumed run
restores all of it and replays the index stream to the same position, so on CPU it ends with the
same numbers as a run that was never interrupted.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alignbench.config import ConfigError
from alignbench.training.distributed import is_main, share_from_main

log = logging.getLogger(__name__)

POLICY = "policy"
CHECKPOINTS = "checkpoint"
MARKER = "COMPLETE"
# Keys a resumed run may change: where it logs, the fault drills that killed it, threads.
MAY_DIFFER = ("resume", "fault.", "tracking.", "threads", "cache_dir")


def save_policy(models, tracker) -> None:
    """The trained policy and its tokenizer as the run's `policy/` artifact (`save_pretrained`,
    safetensors), written where the tracker keeps it (on a local store, written once in place)."""
    with tracker.artifact_dir(POLICY) as out:
        models.policy.save_pretrained(out, safe_serialization=True)
        models.tokenizer.save_pretrained(out)


@dataclass
class LoopState:
    """A loop's position and bookkeeping: what `LoopBookkeeping` needs to go on from a checkpoint."""

    step: int
    batches_drawn: int
    history: list
    train_time: float
    eval_time: float
    tokens_seen: int


def trainable(policy) -> dict[str, torch.Tensor]:
    return {n: p for n, p in policy.named_parameters() if p.requires_grad}


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save_checkpoint(config_yaml: str, tracker, policy, optimisation, state: LoopState) -> None:
    """Write the checkpoint of `state.step` (with the run's resolved config, `config_yaml`), then
    delete the older ones."""
    from safetensors.torch import save_file

    name = f"{CHECKPOINTS}/step-{state.step:08d}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        save_file({n: p.detach().contiguous().cpu() for n, p in trainable(policy).items()}, str(out / "trainable.safetensors"))
        torch.save({"optimizer": optimisation.optimizer.state_dict(), "scheduler": optimisation.scheduler.state_dict(),
                    "rng": rng_states()}, out / "optimizer.pt")
        py_state = random.getstate()
        np_state = np.random.get_state()
        (out / "state.json").write_text(json.dumps({
            "loop": state.__dict__, "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]}))
        (out / "config.yaml").write_text(config_yaml)
        tracker.log_dir(out, name)
    with tempfile.TemporaryDirectory() as tmp:  # last: the checkpoint is complete
        (Path(tmp) / MARKER).write_text(str(state.step))
        tracker.log_dir(tmp, name)
    for old in tracker.list_artifacts(CHECKPOINTS):
        if old != name:
            tracker.delete_artifacts(old)
    log.info("checkpoint at step %d (artifact %s)", state.step, name)


def latest_checkpoint(tracker) -> str | None:
    """The artifact path of the run's newest complete checkpoint, or None."""
    complete = [p for p in tracker.list_artifacts(CHECKPOINTS)
                if f"{p}/{MARKER}" in tracker.list_artifacts(p)]
    return max(complete, default=None)


def fetch_checkpoint(resume: str, config: dict, read_config, tracker) -> Path:
    """Download the newest complete checkpoint of the run being resumed (`resume`) and check that this
    command trains the same thing: its resolved `config` against the checkpoint's, as `read_config`
    (`training.settings.saved_config`) reads that file; ConfigError (one line) otherwise."""
    if tracker.run_id != resume:
        raise ConfigError(f"resume={resume}: logging into run {tracker.run_id}, not the run being resumed")
    path = latest_checkpoint(tracker)
    if path is None:
        raise ConfigError(f"resume={resume}: the run has no checkpoint (train.checkpoint_every=N writes them)")
    local = Path(tracker.download_artifacts(path, tempfile.mkdtemp(prefix="alignbench-resume-")))
    saved, now = flat(read_config(local / "config.yaml")), flat(config)
    for key in sorted(set(saved) | set(now)):
        if not key.startswith(MAY_DIFFER) and saved.get(key) != now.get(key):
            shutil.rmtree(local, ignore_errors=True)
            raise ConfigError(f"resume={resume}: the run was trained with {key}={saved.get(key)}, "
                              f"this command has {key}={now.get(key)}; resume with the run's own settings")
    return local


def restore_checkpoint(local: Path, policy, optimisation) -> LoopState:
    """Load a fetched checkpoint into the policy, optimiser, schedule and RNGs; the loop's state.
    The folder is removed once every process has read it (rank 0 removes it)."""
    from safetensors.torch import load_file

    params = trainable(policy)
    saved = load_file(str(local / "trainable.safetensors"))
    if set(saved) != set(params):
        raise ConfigError("resume: the checkpoint's trainable parameters are not this model's")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])
    states = torch.load(local / "optimizer.pt", weights_only=True)
    optimisation.optimizer.load_state_dict(states["optimizer"])
    optimisation.scheduler.load_state_dict(states["scheduler"])
    torch.set_rng_state(states["rng"]["torch"])
    if "cuda" in states["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["rng"]["cuda"])
    meta = json.loads((local / "state.json").read_text())
    version, internal, gauss = meta["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = meta["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    share_from_main(None)  # a barrier: every rank has read the folder
    if is_main():
        shutil.rmtree(local, ignore_errors=True)
    state = LoopState(**meta["loop"])
    state.history = [(step, metrics) for step, metrics in state.history]
    log.info("resumed from the checkpoint of step %d", state.step)
    return state


def flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
