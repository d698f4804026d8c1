"""Hub-model correctness, on a tiny Llama + the project's tokenizer saved with `save_pretrained` (no
download): SFT first when the model's config says so, sampling exactly from pi whatever the
model's generation_config says, the reference at the policy's precision (step-0 KL exactly 0,
fp32 and bf16), dropout off for old log-probs, the reward model's identity in cache keys, KTO's
z0 averaged across processes, `eval.n_pref_pairs=0`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from alignbench.config import compose
from alignbench.data.records import UnpairedRecord
from alignbench.data.tokenizing import prompt_ids
from alignbench.losses.kto import kto_loss
from alignbench.models import loading
from alignbench.models.builtin import build_tiny_model
from alignbench.models.generation import response_token_logps, sample
from alignbench.models.loading import load_models
from alignbench.models.logps import position_ids_from_mask, sequence_logps
from alignbench.models.pairs import pair_logps
from alignbench.training import online
from alignbench.training.loop import make_accelerator
from alignbench.training.settings import length_limits, load_settings, model_settings, run_settings
from alignbench.training.setup import load_data_set, prepare
from helpers import FAST, count_calls, make_tiny_tokenizer

CPU = torch.device("cpu")
PROMPTS = ["Human: What is a good book to read?", "The food was", "Tell me about the weather today.",
           "A short review", "User: hello", "Assistant: I liked the film, the acting was great"]


def not_pi_generation_config(tokenizer):
    """Everything a hub model's generation_config can set that would change what `generate` samples."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True, temperature=0.3, top_k=2, top_p=0.5, min_p=0.2, typical_p=0.5, repetition_penalty=5.0,
        no_repeat_ngram_size=1, min_length=20, min_new_tokens=10, max_length=12, forced_bos_token_id=5,
        forced_eos_token_id=6, suppress_tokens=[7, 8, 9], begin_suppress_tokens=[10], bad_words_ids=[[11], [12]],
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    """A tiny Llama + tokenizer saved like a hub checkpoint, whose generation_config is far from pi."""
    tokenizer = make_tiny_tokenizer(300)
    cfg = compose(["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2"])
    model = build_tiny_model(model_settings(cfg.model).tiny, tokenizer, seed=0)
    model.generation_config = not_pi_generation_config(tokenizer)
    path = tmp_path_factory.mktemp("hub") / "tiny-hub-model"
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    assert json.loads((path / "generation_config.json").read_text())["repetition_penalty"] == 5.0
    return path


def hub_cfg(path, *extra, model="smollm2-135m"):
    """A run on the saved model (full fine-tuning unless `extra` sets a LoRA block), at the tests' sizes."""
    local = "data=local" in extra  # FAST's data.* sizes are the built-in task's
    fast = [o for o in FAST if not o.startswith("model.") and not (local and o.startswith("data."))]
    return compose([*fast, f"model={model}", f"model.path={path}", "model.lora=null", "device=cpu", *extra])


# --------------------------------------------------------------------------- SFT for hub models

def write_hh_file(path, n: int) -> None:
    topics = ["hotel", "pizza place", "new film", "concert", "train trip"]
    with open(path, "w") as f:
        for i in range(n):
            t = f"the {topics[i % len(topics)]} number {i}"
            f.write(json.dumps({"chosen": f"\n\nHuman: Tell me about {t}.\n\nAssistant: it was great and lovely.",
                                "rejected": f"\n\nHuman: Tell me about {t}.\n\nAssistant: it was awful."}) + "\n")


def test_hub_model_whose_config_says_sft_is_sft_trained_on_external_data(hub_dir, tmp_path, monkeypatch):
    data_file = tmp_path / "hh.jsonl"
    write_hh_file(data_file, 40)
    sft_runs = count_calls(monkeypatch, loading, "sft_train")
    sft = ["model.sft.steps=2", "model.sft.batch_size=4", "model.sft.n_examples=16"]
    cfg = hub_cfg(hub_dir, "data=local", f"data.path={data_file}", f"cache_dir={tmp_path / 'cache'}", *sft,
                  model="pythia-160m")
    assert cfg.model.sft.enabled  # conf/model/pythia-160m.yaml: a base model, SFT first
    loaded = load_data_set(run_settings(cfg))
    assert len(sft_runs) == 1
    examples = sft_runs[0][2]
    assert len(examples) == 16 and all(r.startswith(" it was great") for _, r in examples)  # the chosen replies
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(hub_dir).state_dict()
    after = loaded.models.reference.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # SFT moved the weights
    again = load_data_set(run_settings(cfg))  # the SFT stage is cached: a second run trains nothing
    assert len(sft_runs) == 1 and again.models.key == loaded.models.key
    torch.testing.assert_close(again.models.reference.state_dict(), after)

    off = hub_cfg(hub_dir, "data=local", f"data.path={data_file}", f"cache_dir={tmp_path / 'cache'}")
    assert not off.model.sft.enabled  # conf/model/smollm2-135m.yaml: an instruct model, no SFT
    load_data_set(run_settings(off))
    assert len(sft_runs) == 1


# --------------------------------------------------------------------------- sampling exactly from pi

def pi_sampler(model, tokenizer, prompts, *, max_new_tokens, temperature, seed):
    """Ancestral sampling written out: full forward each step, softmax(logits / T), one draw per row."""
    ids, mask = prompt_ids(prompts, tokenizer, 32)
    torch.manual_seed(seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    done, out = torch.zeros(len(prompts), dtype=torch.bool), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
            token = torch.multinomial(torch.softmax(logits[:, -1].float() / temperature, -1), 1).squeeze(1)
            token = torch.where(done, torch.full_like(token, pad), token)
            out.append(token)
            done |= token == eos
            if done.all():
                break
            ids, mask = torch.cat([ids, token[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(out, 1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_is_from_pi_whatever_the_generation_config_says(hub_dir, temperature):
    models = load_models(load_settings(hub_cfg(hub_dir)))
    model, tokenizer = models.policy.eval(), models.tokenizer
    assert model.generation_config.repetition_penalty == 5.0  # the saved config is loaded, and ignored
    s = sample(model, tokenizer, PROMPTS, max_new_tokens=14, temperature=temperature, max_prompt_length=32,
               batch_size=len(PROMPTS), seed=3, device=CPU)
    expected = pi_sampler(model, tokenizer, PROMPTS, max_new_tokens=14, temperature=temperature, seed=3)
    resp = s.input_ids[:, s.prompt_width:]
    assert torch.equal(resp[:, :expected.shape[1]], expected)
    assert s.lengths.max() > 10  # not cut at the config's max_length=12 total tokens
    # The same request through `generate` follows the model's generation_config: not pi.
    ids, mask = prompt_ids(PROMPTS, tokenizer, 32)
    torch.manual_seed(3)
    generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_k=0,
                               top_p=1.0, max_new_tokens=14)[:, ids.shape[1]:]
    assert not torch.equal(generated[:, :expected.shape[1]], expected)


# --------------------------------------------------------------------------- step-0 KL, fp32 and bf16

@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change once set: a test
    that switches precision starts and ends with a fresh one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("source,precision", [("hub", "fp32"), ("hub", "bf16"), ("builtin", "bf16")])
def test_kl_and_log_ratios_at_step_zero_are_exactly_zero(hub_dir, tmp_path, shared_cache, source, precision,
                                                         fresh_accelerator_state):
    """Policy == reference at step 0: the k1 estimate on the policy's own samples and the held-out pairs'
    log-ratios (cached reference log-probs) are exactly 0, also with bf16: the policy runs under
    accelerate's autocast and the reference under the same (the built-in model keeps fp32 weights,
    the hub model is loaded in bf16)."""
    sizes = ["eval.n_prompts=12", "data.n_train_prompts=16", "data.n_eval_prompts=8", "eval.n_pref_pairs=8"]
    if source == "hub":
        cfg = hub_cfg(hub_dir, f"precision={precision}", f"cache_dir={tmp_path}", *sizes)
    else:  # the shared cache's SFT model; its bf16 reference outputs are cached under their own keys
        cfg = compose([*FAST, f"precision={precision}", "device=cpu", *sizes])
    prepared = prepare(run_settings(cfg))
    models = prepared.models
    assert models.autocast_dtype == (torch.bfloat16 if precision == "bf16" else None)
    accelerator = make_accelerator(cfg.precision, models.device)
    policy = accelerator.unwrap_model(accelerator.prepare(models.policy))  # as the loops evaluate it
    metrics = prepared.evaluator.evaluate(policy).metrics
    assert metrics["eval/kl"] == 0.0 and metrics["eval/kl_per_token"] == 0.0
    assert metrics["eval/policy_length"] > 1
    tokens, ref = prepared.evaluator.pref_eval
    with torch.no_grad():
        pol = pair_logps(policy, tokens, cfg.eval.batch_size, CPU, models.padding_free)
    assert torch.equal(pol["chosen"], ref["chosen"]) and torch.equal(pol["rejected"], ref["rejected"])
    # The sampled tokens' log-probs are a plain forward's log-softmax (temperature 1).
    s = sample(policy, models.tokenizer, PROMPTS, max_new_tokens=10, temperature=1.0, max_prompt_length=32,
               batch_size=4, seed=0, device=CPU)
    got = response_token_logps(policy, s, 4, CPU)
    with torch.no_grad(), models.autocast():
        logits = models.reference(input_ids=s.input_ids, attention_mask=s.attention_mask,
                                  position_ids=position_ids_from_mask(s.attention_mask)).logits.float()
    plain = torch.log_softmax(logits[:, s.prompt_width - 1:-1], -1).gather(-1, s.input_ids[:, s.prompt_width:, None])
    torch.testing.assert_close(got, plain.squeeze(-1) * s.response_mask[:, s.prompt_width:], atol=1e-5, rtol=0)
    if source == "builtin":  # fp32 weights: what the reference computed outside the policy's autocast
        with torch.no_grad():
            fp32_ref = response_token_logps(models.reference, s, 4, CPU)
        assert (got - fp32_ref).abs().max() > 1e-3


# --------------------------------------------------------------------------- dropout off for old log-probs

def test_old_logps_come_from_the_policy_in_eval_mode(hub_dir):
    cfg = hub_cfg(hub_dir, "model.lora={r: 4, alpha: 8, dropout: 0.5, target_modules: [q_proj, v_proj]}",
                  "method=ppo", "method.rollout_batch_size=6", "method.max_new_tokens=8")
    models = load_models(load_settings(cfg))
    with torch.no_grad():
        for name, p in models.policy.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)  # adapters that do something, so their dropout shows
    settings = run_settings(cfg)
    learner = online.make_learner(settings, models, critic_free=False)
    prepared = SimpleNamespace(models=models, builtin_task=False)
    scorer = SimpleNamespace(score_tokens=lambda ids, mask: torch.zeros(ids.shape[0]))
    assert learner.policy.training
    rollout = online.collect_rollout(settings, prepared, learner, scorer, PROMPTS, 0, 0.05, critic_free=False)
    assert learner.policy.training  # restored for the optimisation epochs
    pw = rollout.samples.prompt_width
    with torch.no_grad(), online.eval_mode(learner.policy):
        eval_logps, _, _ = online.policy_forward(learner.policy, learner.value_head, rollout.ids, rollout.attn, pw)
        with models.reference_model() as ref:
            ref_logps = response_token_logps(ref, rollout.samples, 6, CPU)
    assert torch.equal(rollout.old_logps, eval_logps * rollout.mask)
    with torch.no_grad():
        train_logps, _, _ = online.policy_forward(learner.policy, learner.value_head, rollout.ids, rollout.attn, pw)
    assert (train_logps * rollout.mask - rollout.old_logps).abs().max() > 1e-4  # dropout would have shown
    assert rollout.stats["ppo/kl"] != 0.0 and (rollout.old_logps - ref_logps).abs().sum() > 0


# --------------------------------------------------------------------------- the reward model's identity

def test_reward_model_identity_is_part_of_the_reference_eval_cache_key(hub_dir, tmp_path, reward_model_trainings):
    """judge=reward_model judge.path=trained: another reward model gets its own reference scores."""
    base = [f"cache_dir={tmp_path}", "method=ppo", "judge=reward_model", "judge.path=trained", "eval.n_prompts=8",
            "data.n_train_prompts=16", "data.n_eval_prompts=8", "eval.n_pref_pairs=0"]
    first = prepare(run_settings(hub_cfg(hub_dir, *base, "method.reward_model.steps=2"))).evaluator
    assert not first.cache_hit and len(reward_model_trainings) == 1
    other = prepare(run_settings(hub_cfg(hub_dir, *base, "method.reward_model.steps=3"))).evaluator
    assert len(reward_model_trainings) == 2 and other.judge.key != first.judge.key
    assert not other.cache_hit  # not the first reward model's cached reference scores
    assert len(list((tmp_path / "ref_eval").iterdir())) == 2
    again = prepare(run_settings(hub_cfg(hub_dir, *base, "method.reward_model.steps=2"))).evaluator
    assert again.cache_hit and again.judge.key == first.judge.key and len(reward_model_trainings) == 2
    assert again.reference["scores"] == first.reference["scores"]


def test_a_local_reward_model_saved_again_is_another_model(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignbench.evaluation.judges import RewardModelJudge

    tokenizer = make_tiny_tokenizer(300)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    path = tmp_path / "rm"
    keys = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        LlamaForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        keys.append(RewardModelJudge.from_pretrained(str(path), CPU).key)
    assert keys[0] and keys[0] != keys[1]
    assert RewardModelJudge.from_pretrained(str(path), CPU).key == keys[1]  # unchanged folder, same identity


# --------------------------------------------------------------------------- KTO's z0 across processes

def test_kto_z0_is_the_mean_across_processes():
    policy_kl, ref_kl = torch.tensor([1.0, 3.0, -1.0]), torch.zeros(3)
    logps, desirable = torch.tensor([0.5, -0.5]), torch.tensor([True, False])
    seen = []

    def other_process_says_5(local):  # two processes: this one's mean (1.0) and another's (5.0)
        seen.append(local.item())
        return (local + 5.0) / 2

    out = kto_loss(logps, torch.zeros(2), desirable, policy_kl, ref_kl, beta=0.1,
                   mean_across_processes=other_process_says_5)
    assert seen == [1.0] and out.kl.item() == 3.0
    alone = kto_loss(logps, torch.zeros(2), desirable, policy_kl, ref_kl, beta=0.1)
    assert alone.kl.item() == 1.0 and not torch.equal(alone.losses, out.losses)


def test_kto_batch_loss_reduces_z0_across_processes(hub_dir, monkeypatch):
    import accelerate.utils

    from alignbench.methods import METHODS
    from alignbench.training.offline import kto_batch_loss, kto_tokens

    cfg = hub_cfg(hub_dir, "method=kto")
    models = load_models(load_settings(cfg))
    reductions = count_calls(monkeypatch, accelerate.utils, "reduce")
    records = [UnpairedRecord(p, " it was great.", i % 2 == 0) for i, p in enumerate(PROMPTS)]
    tokens = kto_tokens(records, models.tokenizer, length_limits(cfg))
    batch = {k: v for k, v in tokens.items() if torch.is_tensor(v)}
    ref = {"logps": torch.zeros(len(records)), "kl_logps": torch.zeros(len(records))}
    _, metrics, _ = kto_batch_loss(METHODS["kto"].objective(cfg.method), models.policy, batch, ref, CPU)
    assert len(reductions) == 1  # one process here: the reduction runs and changes nothing
    with torch.no_grad():
        kl_logps, _ = sequence_logps(models.policy, batch["kl_input_ids"], batch["kl_attention_mask"],
                                     batch["kl_response_mask"])
    assert metrics()["train/kl_z0"] == pytest.approx(max(0.0, kl_logps.mean().item()), abs=1e-6)


# --------------------------------------------------------------------------- eval.n_pref_pairs

def test_n_pref_pairs_zero_means_none(hub_dir, tmp_path):
    sizes = [f"cache_dir={tmp_path}", "eval.n_prompts=8", "data.n_train_prompts=16", "data.n_eval_prompts=8"]
    none = prepare(run_settings(hub_cfg(hub_dir, *sizes, "eval.n_pref_pairs=0")))
    assert none.evaluator.pref_eval is None
    assert "eval/pref_accuracy" not in none.evaluator.evaluate(none.models.policy).metrics
    five = prepare(run_settings(hub_cfg(hub_dir, *sizes, "eval.n_pref_pairs=5")))
    tokens, ref = five.evaluator.pref_eval
    assert tokens["chosen_input_ids"].shape[0] == 5 and ref["chosen"].shape == (5,)
