"""Fabricate a finished sweep — MLflow runs and the matching Optuna studies — in seconds.

Follows the tracking contract in docs/ARCHITECTURE.md ("Tracking layout") exactly, so report
tests need no training: experiment `sweep-<name>`, a parent run (tag `alignbench.role=sweep`,
`sweep.name`; params `sweep.storage`, `sweep.study_names`), one nested child run per
Optuna trial with the contract's tags, params (dotted config keys), metric histories and
artifacts (`config.yaml`, `eval_samples.json` logged with `MlflowClient.log_table`), and optionally
the confirmation runs: per method and confirmation seed a child run tagged
`alignbench.role=confirmation`, `method`, `confirmation.seed`, whose eval samples (on test prompts,
several samples per prompt) carry `prompt_index` and `sample_index`.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from alignbench.evaluation.stats import win_rate_ci

HOSTILE = "<script>alert(1)</script>"

# Per method: the swept params (Optuna distributions over dotted config keys) and fixed ones.
SPACES = {
    "dpo": {"method.beta": optuna.distributions.FloatDistribution(0.01, 0.5, log=True),
            "method.lr": optuna.distributions.FloatDistribution(1e-4, 1e-3, log=True)},
    "ipo": {"method.tau": optuna.distributions.FloatDistribution(0.01, 1.0, log=True),
            "method.lr": optuna.distributions.FloatDistribution(1e-4, 1e-3, log=True)},
    "simpo": {"method.beta": optuna.distributions.FloatDistribution(1.0, 10.0),
              "method.gamma_beta_ratio": optuna.distributions.CategoricalDistribution([0.3, 0.5, 0.8])},
}
TOPICS = ["pizza", "a film", "the beach", "a novel", "a phone", "a concert", "a cafe", "a bike"]


@dataclass
class FakeSweep:
    uri: str
    name: str
    experiment_id: str
    parent_run_id: str
    journal: str                                                # the Optuna journal file
    study_names: dict[str, str]                                 # method -> study name
    runs: dict[str, list[dict]] = field(default_factory=dict)   # method -> [{run_id, state, metrics, params}]
    prompts: list[str] = field(default_factory=list)
    confirmations: dict[str, list[dict]] = field(default_factory=dict)  # method -> [{seed, run_id, rows}]


def _samples(rng: random.Random, prompts, ref, quality: float, builtin: bool, hostile_at: int | None):
    rows = []
    for i, prompt in enumerate(prompts):
        r_resp, r_score, r_len = ref[i]
        p_len = max(1, int(r_len + rng.gauss(4 * quality, 3)))
        p_score = round(r_score + rng.gauss(quality, 0.5) + 0.02 * (p_len - r_len), 4)
        if rng.random() < 0.1:
            p_score = r_score  # a few ties
        p_resp = HOSTILE if hostile_at == i else f"I loved {TOPICS[i % len(TOPICS)]}, " + "really " * (p_len // 4)
        if hostile_at == i:  # a judge fooled by it: the widest disagreement, so the report shows it as an example
            p_score = round(r_score + 10.0, 4)
        row = {"prompt": prompt, "policy_response": p_resp, "reference_response": r_resp,
               "policy_score": p_score, "reference_score": r_score,
               "policy_length": p_len, "reference_length": r_len,
               "kl": max(0.0, rng.gauss(2 * quality + 0.5, 0.4)),
               "winner": "policy" if p_score > r_score else "reference" if r_score > p_score else "tie"}
        if builtin:
            row["policy_gold"], row["reference_gold"] = p_score, r_score
        rows.append(row)
    return rows


def _final_metrics(rows, builtin: bool, steps: int, batch: int, rng: random.Random) -> dict:
    n = len(rows)
    wins = sum(r["winner"] == "policy" for r in rows)
    ties = sum(r["winner"] == "tie" for r in rows)
    rate, low, high = win_rate_ci(wins, ties, n)
    kl = sum(r["kl"] for r in rows) / n
    plen = sum(r["policy_length"] for r in rows) / n
    m = {"eval/win_rate": rate, "eval/win_rate_ci_low": low, "eval/win_rate_ci_high": high,
         "eval/wins": float(wins), "eval/ties": float(ties), "eval/n": float(n),
         "eval/kl": kl, "eval/kl_per_token": kl / plen,
         "eval/policy_reward": sum(r["policy_score"] for r in rows) / n,
         "eval/reference_reward": sum(r["reference_score"] for r in rows) / n,
         "eval/policy_length": plen,
         "eval/reference_length": sum(r["reference_length"] for r in rows) / n}
    if builtin:
        m["eval/gold_reward"] = sum(r["policy_gold"] for r in rows) / n
        m["eval/reference_gold_reward"] = sum(r["reference_gold"] for r in rows) / n
    m["train/tokens"] = float(steps * batch * 2 * rng.randint(40, 60))
    return m


def fabricate_sweep(root: Path, name: str = "fake", methods=("dpo", "ipo"), n_trials: int = 4,
                    states: dict[str, list[str]] | None = None, builtin: bool = True, hostile: bool = False,
                    n_prompts: int = 24, seed: int = 0, max_steps: int = 6, eval_every: int = 3,
                    study_params: str = "explicit", objective: str = "win_rate", confirm_seeds: int | None = None,
                    confirm_quality: dict[str, float] | None = None, n_test_prompts: int = 10,
                    samples_per_prompt: int = 2, confirm_diverged: dict[str, dict[int, int]] | None = None) -> FakeSweep:
    """A finished sweep under `root`: MLflow sqlite store `root/mlflow.db` (shared by several fabricated
    sweeps; each its own experiment), Optuna journal `root/<name>.journal`.

    `states`: per method, the trial states in order (COMPLETE | PRUNED | FAIL); default all COMPLETE.
    `hostile`: one policy generation of the first method is `<script>alert(1)</script>` and one prompt
    carries HTML. `study_params`: how the parent run points at the studies — "explicit" (params
    `sweep.storage` = the journal's plain path, `sweep.study_names`), "sweep_py" (as alignbench/sweep
    logs it: param and tag `sweep.storage` = `journal:///abs/path`, no `sweep.study_names`, studies named
    `<experiment>/<method>` without a `method` user attr), or "none".
    `objective`: "win_rate" (one direction) or "pareto" (studies maximise win rate, minimise KL).
    `confirm_seeds`: the parent's `sweep.confirm_seeds` param (None: not logged, as an older sweep).
    `confirm_quality`: per method, the quality of its confirmation runs (seeds seed+1..seed+confirm_seeds,
    `n_test_prompts` x `samples_per_prompt` samples each); methods of equal quality get identical samples.
    `confirm_diverged`: per method, {seed: step} of confirmation runs tagged diverged at that step; a seed
    outside the method's confirmation seeds is an extra FAILED run (a non-finite loss), with no samples.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(f"sweep-{name}", artifact_location=(root / "artifacts" / name).as_uri())
    journal = root / f"{name}.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study_names = {m: (f"sweep-{name}/{m}" if study_params == "sweep_py" else f"{name}-{m}") for m in methods}

    prompts = [f"Write a review of {TOPICS[i % len(TOPICS)]} (#{i})." for i in range(n_prompts)]
    if hostile:
        # the prompt of the hostile generation (hostile_at=3), so one shown example carries both
        prompts[3] = "Review <b>this</b> & \"that\" </td></table>"
    ref = [(f"It was {TOPICS[i % len(TOPICS)]}.", round(rng.gauss(0, 1), 4), rng.randint(8, 20))
           for i in range(n_prompts)]

    t = int(time.time() * 1000)
    pid = _create_parent(client, exp_id, name, methods, n_trials, builtin, seed, study_params, objective, journal,
                         study_names, t, confirm_seeds)
    fake = FakeSweep(uri=uri, name=name, experiment_id=exp_id, parent_run_id=pid, journal=str(journal),
                     study_names=study_names, prompts=prompts)
    setup = _Setup(client, exp_id, pid, rng, prompts, ref, builtin, seed, max_steps, eval_every, objective)
    for mi, method in enumerate(methods):
        directions = ["maximize", "minimize"] if objective == "pareto" else ["maximize"]
        study = optuna.create_study(study_name=study_names[method], storage=storage, directions=directions,
                                    sampler=optuna.samplers.RandomSampler(seed=seed + mi))
        if study_params != "sweep_py":
            study.set_user_attr("method", method)
        fake.runs[method] = []
        for state in (states or {}).get(method, ["COMPLETE"] * n_trials):
            run = _log_trial(setup, study, method, mi, state, 3 if hostile and mi == 0 else None, t)
            fake.runs[method].append(run)
            t += 10_000
    for method, quality in (confirm_quality or {}).items():
        fake.confirmations[method] = _log_confirmations(setup, method, quality, confirm_seeds or 0,
                                                        n_test_prompts, samples_per_prompt, t,
                                                        (confirm_diverged or {}).get(method, {}))
        t += 10_000
    client.set_terminated(pid, "FINISHED", end_time=t)
    return fake


@dataclass
class _Setup:
    """What every trial of one fabricated sweep shares."""
    client: MlflowClient
    experiment_id: str
    parent_run_id: str
    rng: random.Random
    prompts: list[str]
    ref: list[tuple]
    builtin: bool
    seed: int
    max_steps: int
    eval_every: int
    objective: str


def _create_parent(client, exp_id, name, methods, n_trials, builtin, seed, study_params, objective, journal,
                   study_names, t, confirm_seeds) -> str:
    """The sweep's parent run, pointing at its studies as `study_params` says; its run id."""
    parent = client.create_run(exp_id, run_name=f"sweep-{name}", start_time=t, tags={
        "alignbench.role": "sweep", "sweep.name": name, "alignbench.version": "0.1.0",
        "mlflow.source.git.commit": "0123456789abcdef0123456789abcdef01234567",
        "alignbench.hardware": "2 CPU cores (fake)", "sweep.objective": objective}
        | ({"sweep.storage": f"journal://{journal}"} if study_params == "sweep_py" else {}))
    pid = parent.info.run_id
    params = {"sweep.name": name, "sweep.methods": ",".join(methods), "sweep.n_trials": n_trials,
              "sweep.objective": objective, "seed": seed, "model.name": "tiny", "data.name": "builtin" if builtin else "local"}
    if confirm_seeds is not None:
        params["sweep.confirm_seeds"] = confirm_seeds
    if study_params == "explicit":
        params |= {"sweep.storage": str(journal), "sweep.study_names": ",".join(study_names.values())}
    elif study_params == "sweep_py":
        params |= {"sweep.storage": f"journal://{journal}"}
    client.log_batch(pid, params=[Param(k, str(v)) for k, v in params.items()], synchronous=True)
    return pid


def _log_trial(setup: _Setup, study, method: str, mi: int, state: str, hostile_at: int | None, t: int) -> dict:
    """One Optuna trial of `method` ending in `state`, as a nested MLflow run; its record for FakeSweep.runs."""
    s, client = setup, setup.client
    trial = study.ask(SPACES[method])
    quality = -0.1 + 0.8 * s.rng.random() + 0.2 * mi
    rows = _samples(s.rng, s.prompts, s.ref, quality, s.builtin, hostile_at)
    final = _final_metrics(rows, s.builtin, s.max_steps, 8, s.rng)
    cfg_params = {"method.name": method, "seed": s.seed, "model.name": "tiny",
                  "data.name": "builtin" if s.builtin else "local", "judge.name": "gold" if s.builtin else "reward_model",
                  "train.max_steps": s.max_steps, "train.batch_size": 8, "device": "cpu"} | trial.params
    tags = {"alignbench.role": "trial", "mlflow.parentRunId": s.parent_run_id, "method": method,
            "optuna.study": study.study_name, "optuna.trial_number": str(trial.number),
            "optuna.trial_state": state, "alignbench.version": "0.1.0",
            "mlflow.source.git.commit": "0123456789abcdef0123456789abcdef01234567"}
    if state == "FAIL":
        tags["failure_reason"] = "FloatingPointError: loss is NaN at step 2"
    rid = client.create_run(s.experiment_id, run_name=f"{method}-{trial.number:03d}", tags=tags, start_time=t).info.run_id
    client.log_batch(rid, params=[Param(k, str(v)) for k, v in cfg_params.items()], synchronous=True)
    metrics = _metric_history(s, trial, state, quality, final, t)
    seconds = 3.0 + s.rng.random()
    if state == "COMPLETE":
        metrics += [Metric("train/tokens", final["train/tokens"], t + s.max_steps, s.max_steps),
                    Metric("time/total_seconds", seconds, t + s.max_steps, s.max_steps),
                    Metric("time/train_seconds", seconds * 0.7, t + s.max_steps, s.max_steps)]
    client.log_batch(rid, metrics=metrics, synchronous=True)
    if state == "COMPLETE":
        client.log_dict(rid, cfg_params, "config.yaml")
        client.log_table(rid, data=pd.DataFrame(rows), artifact_file="eval_samples.json")
        study.tell(trial, [final["eval/win_rate"], final["eval/kl"]][:len(study.directions)])
    else:
        study.tell(trial, state=getattr(optuna.trial.TrialState, state))
    status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}[state]
    client.set_terminated(rid, status, end_time=t + int(seconds * 1000))
    return {"run_id": rid, "state": state, "metrics": client.get_run(rid).data.metrics, "params": cfg_params,
            "trial_number": trial.number, "rows": rows if state == "COMPLETE" else None}


def _metric_history(s: _Setup, trial, state: str, quality: float, final: dict, t: int) -> list[Metric]:
    """Training loss every 2 steps and evals every `eval_every` steps up to where `state` stops
    (PRUNED: the first eval; FAIL: step 2, NaN loss); reports each eval's win rate to the trial."""
    metrics = []
    last_step = {"COMPLETE": s.max_steps, "PRUNED": s.eval_every, "FAIL": 2}[state]
    for step in range(2, last_step + 1, 2):
        loss = math.log(2) * math.exp(-0.15 * quality * step) if state != "FAIL" else float("nan")
        metrics.append(Metric("train/loss", loss, t + step, step))
    n_prompts = len(s.prompts)
    for step in range(s.eval_every, last_step + 1, s.eval_every):
        frac = step / s.max_steps
        if step == s.max_steps:
            evm = {k: v for k, v in final.items() if k.startswith("eval/")}
        else:
            w = 0.5 + (final["eval/win_rate"] - 0.5) * frac * (0.6 if state == "PRUNED" else 1.0)
            _, lo, hi = win_rate_ci(w * n_prompts, 0, n_prompts)
            evm = {"eval/win_rate": w, "eval/win_rate_ci_low": lo, "eval/win_rate_ci_high": hi,
                   "eval/kl": final["eval/kl"] * frac}
        metrics += [Metric(k, float(v), t + step, step) for k, v in evm.items()]
        if s.objective != "pareto":
            trial.report(evm["eval/win_rate"], step)
    return metrics


def _log_confirmations(s: _Setup, method: str, quality: float, n_seeds: int, n_prompts: int, per_prompt: int,
                       t: int, diverged: dict[int, int]) -> list[dict]:
    """The confirmation runs of `method`: seeds s.seed+1 .. s.seed+n_seeds on the same test prompts and
    reference responses (fixed by the task, not the seed). The first seed's first attempt is KILLED
    (an interrupted run, re-run after resume) and has no samples."""
    prompts = [f"Review {TOPICS[i % len(TOPICS)]} for the test set (#{i})." for i in range(n_prompts)]
    task_rng = random.Random(f"task-{s.seed}")
    refs = [[(f"It was {TOPICS[i % len(TOPICS)]}.", round(task_rng.gauss(0, 1), 4), task_rng.randint(8, 20))
             for i in range(n_prompts)] for _ in range(per_prompt)]
    out = []
    for seed in range(s.seed + 1, s.seed + n_seeds + 1):
        tags = {"alignbench.role": "confirmation", "mlflow.parentRunId": s.parent_run_id, "method": method,
                "confirmation.seed": str(seed)}
        if seed == s.seed + 1:
            killed = s.client.create_run(s.experiment_id, run_name=f"{method}-confirm-{seed}", tags=tags, start_time=t)
            s.client.set_terminated(killed.info.run_id, "KILLED", end_time=t + 500)
            t += 1000
        # Equal quality, equal draws: two methods of the same quality have identical samples.
        rng = random.Random(f"{seed}-{quality}")
        rows = []
        for k, ref in enumerate(refs):
            for i, row in enumerate(_samples(rng, prompts, ref, quality, s.builtin, None)):
                rows.append(row | {"prompt_index": i, "sample_index": k})
        tags_run = tags | ({"diverged": "true", "diverged.step": str(diverged[seed]),
                            "diverged.reason": "sampled KL 134.6 nats/seq is above eval.diverged_kl=60"}
                           if seed in diverged else {})
        rid = s.client.create_run(s.experiment_id, run_name=f"{method}-confirm-{seed}", tags=tags_run,
                                  start_time=t).info.run_id
        params = {"method.name": method, "seed": seed, "eval.split": "test", "eval.samples_per_prompt": per_prompt,
                  "judge.name": "gold" if s.builtin else "reward_model"}
        s.client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()], synchronous=True)
        s.client.log_table(rid, data=pd.DataFrame(rows), artifact_file="eval_samples.json")
        s.client.set_terminated(rid, "FINISHED", end_time=t + 1000)
        out.append({"seed": seed, "run_id": rid, "rows": rows})
        t += 2000
    for seed in sorted(set(diverged) - set(range(s.seed + 1, s.seed + n_seeds + 1))):
        tags = {"alignbench.role": "confirmation", "mlflow.parentRunId": s.parent_run_id, "method": method,
                "confirmation.seed": str(seed), "diverged": "true", "diverged.step": str(diverged[seed]),
                "diverged.reason": f"loss is nan at step {diverged[seed]}"}
        failed = s.client.create_run(s.experiment_id, run_name=f"{method}-confirm-{seed}", tags=tags, start_time=t)
        s.client.set_terminated(failed.info.run_id, "FAILED", end_time=t + 500)
        t += 1000
    return out
