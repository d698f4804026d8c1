"""alignbench.models.loading and .builtin: hub path via from_pretrained (offline, on a model the test
saves), LoRA reference, safetensors only, trust_remote_code off, local hh-rlhf data end to end,
reproducibility."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignbench.config import compose, group_options
from alignbench.models.logps import sequence_logps
from alignbench.models.builtin import build_tiny_model, train_tokenizer
from alignbench.models.loading import load_models
from alignbench.tracking.null import NullTracker
from alignbench.training.run import train
from alignbench.training.settings import load_settings, model_settings
from helpers import FAST, SENTENCES


@pytest.fixture
def saved_model(tmp_path):
    """A tiny causal LM + tokenizer saved like a hub checkpoint (safetensors)."""
    tokenizer = train_tokenizer(SENTENCES * 4, 300)
    cfg = compose(["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2"])
    model = build_tiny_model(model_settings(cfg.model).tiny, tokenizer, seed=0)
    path = tmp_path / "tiny-hub-model"
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


def hub_cfg(path, *extra):
    return compose(["model=smollm2-135m", f"model.path={path}", *extra])


def test_hub_model_loads_with_from_pretrained_and_full_finetuning_has_a_frozen_copy(saved_model):
    path, _, _ = saved_model
    models = load_models(load_settings(hub_cfg(path, "model.lora=null")))
    assert models.reference is not None
    assert not any(p.requires_grad for p in models.reference.parameters())
    assert models.tokenizer.pad_token is not None


def test_lora_reference_is_the_base_model_with_adapters_disabled(saved_model):
    path, base, tokenizer = saved_model
    models = load_models(load_settings(hub_cfg(path, "model.lora.target_modules=[q_proj,v_proj]")))
    assert models.reference is None
    trainable = [n for n, p in models.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    # Make the adapters do something, then check the reference ignores them.
    with torch.no_grad():
        for n, p in models.policy.named_parameters():
            if "lora_B" in n:
                p.fill_(0.5)
    ids = torch.tensor([tokenizer("the food was bad")["input_ids"]])
    mask, resp = torch.ones_like(ids), torch.ones_like(ids)
    with models.reference_model() as ref:
        ref_logps, _ = sequence_logps(ref, ids, mask, resp)
    policy_logps, _ = sequence_logps(models.policy, ids, mask, resp)
    base_logps, _ = sequence_logps(base.eval(), ids, mask, resp)
    assert ref_logps.item() == pytest.approx(base_logps.item(), abs=1e-5)
    assert abs(policy_logps.item() - base_logps.item()) > 1e-3
    assert models.policy.training  # the context restores training mode


def test_pickle_checkpoints_are_refused(saved_model, tmp_path):
    _, model, tokenizer = saved_model
    pickled = tmp_path / "pickled"
    model.config.save_pretrained(pickled)
    tokenizer.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # a pickle: could run code on load
    assert not list(pickled.glob("*.safetensors"))
    with pytest.raises(OSError):
        load_models(load_settings(hub_cfg(pickled, "model.lora=null")))


def test_trust_remote_code_is_off_unless_asked():
    for model in group_options("model"):
        assert compose([f"model={model}"]).model.trust_remote_code is False
    assert compose(["judge=reward_model"]).judge.trust_remote_code is False


HH_ROW = {
    "chosen": "\n\nHuman: Tell me about the hotel.\n\nAssistant: the room was great and the staff was lovely.",
    "rejected": "\n\nHuman: Tell me about the hotel.\n\nAssistant: the room was awful.",
}


def write_hh_file(path, n):
    topics = ["hotel", "pizza place", "new film", "concert", "train trip"]
    with open(path, "w") as f:
        for i in range(n):
            t = topics[i % len(topics)]
            row = {k: v.replace("the hotel", f"the {t} number {i}") for k, v in HH_ROW.items()}
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps({"chosen": HH_ROW["chosen"], "rejected": HH_ROW["chosen"]}) + "\n")  # chosen == rejected
        f.write(json.dumps({"chosen": HH_ROW["chosen"]}) + "\n")  # missing field


def test_local_hh_rlhf_file_trains_the_builtin_model_end_to_end(workdir, saved_model):
    """data=local with an hh-rlhf .jsonl: SFT on its chosen responses, DPO, judged by a reward model."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    path, _, tokenizer = saved_model
    judge_dir = workdir / "judge"
    judge = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id))
    judge.save_pretrained(judge_dir, safe_serialization=True)
    tokenizer.save_pretrained(judge_dir)
    data_file = workdir / "hh.jsonl"
    write_hh_file(data_file, 60)
    tracker = NullTracker()
    fast = [o for o in FAST if not o.startswith("data.")]  # the built-in task's sizes
    result = train(compose([*fast, "data=local", f"data.path={data_file}", "judge=reward_model",
                            f"judge.path={judge_dir}", "data.validation_fraction=0.2",
                            "train.max_prompt_length=40", "train.max_length=80"]), tracker)
    assert tracker.params["data.dropped.chosen_equals_rejected"] == 1
    assert tracker.params["data.dropped.missing_field"] == 1
    assert tracker.params["data.n_train"] + len(result.rows) >= 48
    assert math.isfinite(result.metrics["eval/win_rate"]) and math.isfinite(result.metrics["eval/kl"])
    assert result.rows[0]["prompt"].endswith("\n\nAssistant:")


def test_same_seed_gives_identical_metrics(workdir):
    a = train(compose([*FAST, "train.max_steps=3", "eval.every_n_steps=0"]), NullTracker())
    b = train(compose([*FAST, "train.max_steps=3", "eval.every_n_steps=0"]), NullTracker())
    keys = [k for k in a.metrics if k.startswith("eval/") and k != "eval/seconds"]
    assert {k: a.metrics[k] for k in keys} == {k: b.metrics[k] for k in keys}
    assert [r["policy_response"] for r in a.rows] == [r["policy_response"] for r in b.rows]
