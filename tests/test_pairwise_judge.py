"""The pairwise LLM judge: position swapping, its held-out accuracy, the chance warning, a run end to end."""

from __future__ import annotations


import mlflow
import pytest
import torch

from alignbench.data.records import PreferenceRecord
from alignbench.evaluation.judges import judge_accuracy, judge_accuracy_caveat, judge_summary
from alignbench.evaluation.pairwise_judge import PLAIN_ENDING, PairwiseJudge, swap_outcomes
from alignbench.evaluation.stats import win_rate_ci
from helpers import FAST, make_tiny_tokenizer, run_cli

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_a_win_needs_both_orders_and_a_disagreement_is_a_tie():
    # margins log p(A) - log p(B): first shown as A, then the same pair swapped (first shown as B)
    first_as_a = torch.tensor([2.0, 1.0, -1.0, -0.5, 0.0, 3.0])
    first_as_b = torch.tensor([-1.0, 0.5, 1.0, -2.0, -1.0, 0.0])
    assert swap_outcomes(first_as_a, first_as_b) == [
        1.0,   # A, then B: the first response both times
        0.5,   # A both times: the position, not the response
        0.0,   # B, then A: the second response both times
        0.5,   # B both times
        0.5,   # no preference in the first order
        0.5,   # no preference in the second order
    ]


class StubJudge(PairwiseJudge):
    """The pairwise logic over a hand-written margin instead of a model: `margin(a, b)` is log p(A) - log p(B)."""

    def __init__(self, margin):
        self.margin = margin
        self.truncated_inputs = 0

    def margins(self, prompts, a, b):
        return torch.tensor([self.margin(x, y) for x, y in zip(a, b)], dtype=torch.float64)


LONGER = StubJudge(lambda a, b: float(len(a) - len(b)))   # prefers the longer reply, wherever it stands
SAYS_A = StubJudge(lambda a, b: 1.0)                       # always answers A: pure position bias
PAIRS = [PreferenceRecord("Q1", chosen="a long good answer", rejected="bad"),
         PreferenceRecord("Q2", chosen="a longer answer", rejected="no"),
         PreferenceRecord("Q3", chosen="yes, gladly", rejected="meh"),
         PreferenceRecord("Q4", chosen="ok", rejected="a long rambling wrong answer")]


def test_compare_judges_each_pair_in_both_orders():
    assert LONGER.compare(["q"] * 3, ["long reply", "x", "same"], ["x", "long reply", "sam3"]) == [1.0, 0.0, 0.5]
    assert SAYS_A.compare(["q"] * 3, ["long reply", "x", "same"], ["x", "long reply", "sam3"]) == [0.5] * 3
    assert LONGER.compare([], [], []) == []


def test_judge_accuracy_counts_ties_as_half_and_reports_them():
    m = judge_accuracy(LONGER, PAIRS)  # right on 3 of 4 pairs (the 4th chosen reply is the shorter)
    low, high = win_rate_ci(3, 0, 4)[1:]
    assert m == {"eval/judge_accuracy": 0.75, "eval/judge_accuracy_ci_low": pytest.approx(low),
                 "eval/judge_accuracy_ci_high": pytest.approx(high), "eval/judge_ties": 0.0,
                 "eval/judge_n_pairs": 4.0}
    biased = judge_accuracy(SAYS_A, PAIRS)  # the orders always disagree: 4 ties, accuracy 1/2
    assert biased["eval/judge_accuracy"] == 0.5 and biased["eval/judge_ties"] == 4.0
    assert judge_accuracy_caveat(biased).startswith(
        "the judge cannot tell chosen from rejected: its accuracy on 4 held-out preference pairs (4 of them ties) "
        "is 0.500")
    assert judge_summary(biased).endswith("AT CHANCE: its win rate means nothing")
    sure = judge_accuracy(LONGER, PAIRS[:3] * 10)  # 30 of 30: interval well above 0.5
    assert sure["eval/judge_accuracy_ci_low"] > 0.5 and judge_accuracy_caveat(sure) is None
    assert judge_summary(sure) == f" judge_accuracy=1.000 [{sure['eval/judge_accuracy_ci_low']:.3f}, 1.000]"
    assert judge_summary({}) == ""


@pytest.fixture(scope="module")
def saved_causal_lm(tmp_path_factory):
    """A tiny randomly initialised LlamaForCausalLM + the project's tokenizer, saved as safetensors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tiny_tokenizer(300)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("judge") / "tiny-causal-lm"
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


def test_batched_margins_are_the_models_next_token_logprobs(saved_causal_lm):
    path, model, tokenizer = saved_causal_lm
    judge = PairwiseJudge.from_pretrained(str(path), torch.device("cpu"), batch_size=3)
    assert judge.name == "llm_pairwise" and not judge.chat and judge.key
    a_id, b_id = judge.answer_ids
    assert a_id != b_id and tokenizer.decode(judge.ending + [a_id]).endswith(PLAIN_ENDING + " A")
    prompts = ["Human: What is a good book?", "Tell me about the weather.", "Hi", "A question " * 30]
    a = ["I liked the film, the story was fun.", "It is sunny.", "", "bad bad"]
    b = ["The food was bad.", "It is warm and sunny today, a lovely day.", "hello", "good " * 200]
    margins = judge.margins(prompts, a, b)
    expected = []
    with torch.no_grad():  # each input alone, unpadded: the left-padded batches must agree
        for p, x, y in zip(prompts, a, b):
            ids = judge.judge_input(p, x, y)
            logps = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
            expected.append((logps[a_id] - logps[b_id]).item())
    assert margins.tolist() == pytest.approx(expected, abs=1e-5)
    assert len(set(round(m, 6) for m in expected)) == 4  # the texts matter, so the check above is not vacuous
    # each reply is cut to its first max_response_tokens tokens: a longer one makes no longer an input
    assert len(judge.judge_input("q", "good " * 200, "x")) == len(judge.judge_input("q", "good " * 400, "x"))
    assert len(judge.judge_input("q", "good " * 20, "x")) < len(judge.judge_input("q", "good " * 200, "x"))


def test_the_chat_template_asks_the_question_when_the_tokenizer_has_one(saved_causal_lm, tmp_path):
    from transformers import AutoTokenizer

    path, model, _ = saved_causal_lm
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    judge = PairwiseJudge(model, tokenizer, torch.device("cpu"))
    assert judge.chat and judge.ending == []
    text = tokenizer.decode(judge.judge_input("Is it sunny?", "yes", "no"))
    assert text.startswith("<|user|>") and text.endswith("Answer with a single letter, A or B.\n<|assistant|>")
    assert "[Reply A]\nyes\n\n[Reply B]\nno" in text


def test_a_random_judge_is_called_at_chance(saved_causal_lm):
    path = saved_causal_lm[0]
    judge = PairwiseJudge.from_pretrained(str(path), torch.device("cpu"))
    pairs = [PreferenceRecord(f"Human: question {i}?", chosen=f"a helpful answer number {i}", rejected="no")
             for i in range(24)]
    m = judge_accuracy(judge, pairs)
    assert m["eval/judge_n_pairs"] == 24
    assert m["eval/judge_accuracy_ci_low"] < 0.5 < m["eval/judge_accuracy_ci_high"]
    assert "cannot tell chosen from rejected" in judge_accuracy_caveat(m)


def test_a_pairwise_judge_judges_a_run_from_the_command_line(workdir, saved_causal_lm):
    path = saved_causal_lm[0]
    out = run_cli("train", *FAST, "judge=llm_pairwise", f"judge.path={path}", "judge.max_prompt_tokens=64",
                  "judge.max_response_tokens=32", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("method=dpo win_rate=")]
    assert line and " judge_accuracy=" in line[0]
    run = mlflow.search_runs(search_all_experiments=True).iloc[0]
    assert run["status"] == "FINISHED" and run["params.judge.name"] == "llm_pairwise"
    assert run["metrics.eval/judge_n_pairs"] == 16
    low, acc, high = (run[f"metrics.eval/judge_accuracy{s}"] for s in ("_ci_low", "", "_ci_high"))
    assert 0 <= low <= acc <= high <= 1
    assert 0 <= run["metrics.eval/judge_ties"] <= 16
    assert run["metrics.eval/win_rate"] == pytest.approx(
        (run["metrics.eval/wins"] + run["metrics.eval/ties"] / 2) / run["metrics.eval/n"])
    # a random judge: the run says it is at chance exactly when its interval includes 0.5
    at_chance = low <= 0.5 <= high
    assert (run.get("tags.judge.warning") is not None and isinstance(run["tags.judge.warning"], str)) == at_chance
    assert ("AT CHANCE" in line[0]) == at_chance


def test_the_reports_run_metadata_shows_the_judges_accuracy_and_says_at_chance():
    import pandas as pd

    from alignbench.report.analysis import judge_accuracy_note

    def trials(m):
        return pd.DataFrame([{"method": "dpo"}, {"method": "dpo", **{f"metrics.{k}": v for k, v in m.items()}}])

    biased = judge_accuracy(SAYS_A, PAIRS)
    assert judge_accuracy_note(trials(biased)) == (
        f"; held-out accuracy 0.500 (95% CI [{biased['eval/judge_accuracy_ci_low']:.3f}, "
        f"{biased['eval/judge_accuracy_ci_high']:.3f}], 4 pairs, 4 ties counted 1/2): AT CHANCE, its win rates mean nothing")
    sure = judge_accuracy(LONGER, PAIRS[:3] * 10)
    assert judge_accuracy_note(trials(sure)) == (
        f"; held-out accuracy 1.000 (95% CI [{sure['eval/judge_accuracy_ci_low']:.3f}, 1.000], 30 pairs, "
        "0 ties counted 1/2)")
    assert judge_accuracy_note(pd.DataFrame([{"method": "dpo"}])) == ""


@pytest.mark.parametrize("overrides, message", [
    ([], "judge=llm_pairwise: set judge.path to a causal LM (a local folder or hub id)"),
    (["judge.path=/no/such/model"], "judge.path=/no/such/model: not found"),
    (["judge.path={tmp}", "judge.gguf_file=missing.gguf"], "judge.gguf_file=missing.gguf: not found in {tmp}"),
    (["judge.path={tmp}", "judge.batch_size=0"], "judge.batch_size=0: must be an integer >= 1"),
    (["judge.name=llm_judge"], "judge.name=llm_judge: unknown judge (choose from gold, reward_model, llm_pairwise)"),
])
def test_bad_pairwise_judge_settings_fail_with_one_line(overrides, message, tmp_path):
    from alignbench.config import ConfigError, compose, validate

    cfg = compose(["judge=llm_pairwise", *(o.format(tmp=tmp_path) for o in overrides)])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == message.format(tmp=tmp_path)


def test_a_bad_judge_path_on_the_command_line_is_one_line_and_exit_2(workdir):
    out = run_cli("train", "judge=llm_pairwise", timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "alignbench: error: judge=llm_pairwise: set judge.path to a causal LM (a local folder or hub id)")
    assert "Traceback" not in out.stderr


def test_the_judge_model_is_loaded_once_per_process_and_again_when_its_files_change(saved_causal_lm, tmp_path):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(saved_causal_lm[0], path)
    first = PairwiseJudge.from_pretrained(str(path), torch.device("cpu"))
    again = PairwiseJudge.from_pretrained(str(path), torch.device("cpu"), max_response_tokens=8)
    assert again.model is first.model and again.key != first.key  # same weights, another question budget
    (path / "config.json").write_text((path / "config.json").read_text() + "\n")  # saved again: another model
    assert PairwiseJudge.from_pretrained(str(path), torch.device("cpu")).model is not first.model


def test_the_judges_held_out_accuracy_is_cached_under_its_key(tmp_path):
    from types import SimpleNamespace

    from alignbench.evaluation.evaluator import Evaluator

    class CountingJudge(StubJudge):
        calls = 0

        def margins(self, prompts, a, b):
            CountingJudge.calls += 1
            return super().margins(prompts, a, b)

    judge = CountingJudge(lambda a, b: float(len(a) - len(b)))
    owner = SimpleNamespace(judge=judge, settings=SimpleNamespace(cache_dir=str(tmp_path)))
    judge.key = "judge-one"
    first = Evaluator._judge_accuracy(owner, PAIRS)
    assert first == judge_accuracy(LONGER, PAIRS) and CountingJudge.calls == 1  # both orders in one pass
    assert Evaluator._judge_accuracy(owner, PAIRS) == first and CountingJudge.calls == 1  # a hit: not judged again
    Evaluator._judge_accuracy(owner, PAIRS[:3])
    judge.key = "judge-two"
    Evaluator._judge_accuracy(owner, PAIRS)
    assert CountingJudge.calls == 3  # other pairs, another judge: each judged
