"""alignbench.bench (main, measurements, trl_peer, sizes): `alignbench bench --quick` writes bench.json
with every key a finite number."""

from __future__ import annotations

import json
import math

import pytest

from alignbench.cli import main

KEYS = ("dpo_throughput_vs_trl", "sweep_speedup_vs_trl", "dpo_step_vs_forward_backward", "overhead_share",
        "peak_rss_mb", "ours_pairs_per_second", "trl_pairs_per_second", "sweep_ours_seconds",
        "sweep_trl_seconds", "ours_step_seconds", "bare_step_seconds")


@pytest.mark.slow
def test_bench_quick_writes_bench_json(workdir, capsys):
    main(["bench", "--quick"])
    result = json.loads((workdir / "bench.json").read_text())
    for key in KEYS:
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]), key
    assert 0 <= result["overhead_share"] <= 1
    assert result["peak_rss_mb"] > 10
    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1 and machine["torch_version"]
    out = capsys.readouterr().out
    assert "DPO throughput vs TRL" in out and "wrote bench.json" in out


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
