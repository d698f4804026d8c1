"""`alignbench {train,sweep,report,ui,bench} [hydra overrides]` — a thin shell over plain functions.

Each subcommand is a Hydra app over conf/ (so `--help`, `--cfg job` and overrides behave as in
any Hydra app); the work is done by `train.train`, `sweep.run_sweep`, `report.build_report`.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from alignbench.config import CONF_DIR, ConfigError, check_overrides, check_settings, one_line, validate
from alignbench.process import exit_interrupted, fail, interrupt_on_sigterm, quiet_libraries, setup_logging
from alignbench.schemas import register

USAGE = """usage: alignbench {train,sweep,report,ui,bench,calibrate} [hydra overrides]

  train   one run, tracked in MLflow          alignbench train method=ipo method.tau=0.3
  sweep   Optuna studies across methods       alignbench sweep sweep=smoke
  report  comparison report of a sweep        alignbench report report.sweep=smoke
  ui      the MLflow UI on 127.0.0.1          alignbench ui ui.port=5000
  bench   speed benchmark vs TRL (bench.json) alignbench bench
  calibrate  the report's test on A/A splits  alignbench calibrate --train 6 method=dpo (no --train: simulated)

Add --help after a subcommand for its config groups and options."""


def train_command(cfg: DictConfig) -> None:
    from alignbench.tracking import mlflow_runs as tracking
    from alignbench.data.records import DataError
    from alignbench.evaluation.judges import judge_summary
    from alignbench.tracking.null import NullTracker
    from alignbench.tracking.store import StoreError
    from alignbench.training.run import train_validated

    from alignbench.training.distributed import end_processes, start_processes

    run_id = None
    try:
        validate(cfg)
        # Under torchrun / `accelerate launch` every process trains its shard; only rank 0 records the run.
        main_process = start_processes(cfg.device).is_main_process
        if cfg.tracking.enabled and main_process:
            problem = tracking.resume_problem(cfg.resume, cfg.tracking.uri) if cfg.get("resume") else None
            if problem:  # before reopening: a finished run is never touched
                raise ConfigError(problem)
            with tracking.tracked_run(cfg.tracking.experiment, cfg.tracking.run_name, tags={"method": cfg.method.name},
                                      async_logging=cfg.tracking.async_logging, uri=cfg.tracking.uri,
                                      run_id=cfg.get("resume")) as tracker:
                run_id = tracker.run_id
                result = train_validated(cfg, tracker)
        else:
            result = train_validated(cfg, NullTracker())
    except (ConfigError, DataError, StoreError) as exc:
        fail(str(exc))
    except KeyboardInterrupt as exc:  # tracked_run has recorded the run KILLED
        exit_interrupted("train", exc, f"MLflow run {run_id} recorded KILLED" if run_id else "")
    end_processes()
    if not main_process:  # one result line per trial: rank 0's
        return
    m = result.metrics
    print(f"method={cfg.method.name} win_rate={m['eval/win_rate']:.3f} "
          f"95% CI [{m['eval/win_rate_ci_low']:.3f}, {m['eval/win_rate_ci_high']:.3f}] "
          f"KL={m['eval/kl']:.2f} nats/seq ({m['eval/kl_per_token']:.3f}/token)"
          + (f" gold={m['eval/gold_reward']:.3f} (ref {m['eval/reference_gold_reward']:.3f})" if "eval/gold_reward" in m else "")
          + judge_summary(m)
          + (f" DIVERGED at step {int(m['train/diverged_step'])} (eval.diverged_kl)" if m.get("train/diverged") else "")
          + (f" mlflow_run={run_id}" if run_id else ""))


def sweep_command(cfg: DictConfig) -> None:
    from alignbench.sweep.run import SweepFailed, run_sweep
    from alignbench.sweep.workers import follow_trials
    from alignbench.tracking.store import StoreError
    from alignbench.training.distributed import announce_trial, end_processes, launched_processes, start_processes

    try:
        check_settings(cfg)
        # Under torchrun / accelerate launch: one worker whose every trial runs on all the processes;
        # rank 0 is the worker (Optuna, MLflow), the others train the trials it announces.
        if launched_processes() > 1 and not start_processes(cfg.device).is_main_process:
            follow_trials()
            end_processes()
            return
        try:
            run_sweep(cfg)
        finally:
            announce_trial(None)  # the other ranks stop
            end_processes()
    except (ConfigError, StoreError) as exc:
        fail(str(exc))
    except SweepFailed as exc:  # the summary is printed; the exit status says the sweep is not complete
        fail(str(exc), code=1)


def report_command(cfg: DictConfig) -> None:
    from alignbench.report.build import build_report
    from alignbench.report.reading import check_store_exists
    from alignbench.tracking.store import StoreError

    try:
        check_settings(cfg)
        check_store_exists(cfg.report.sweep, cfg.tracking.uri)
        path = build_report(cfg)
    except (ConfigError, LookupError, StoreError) as exc:
        fail(str(exc))
    print(f"report: {path}")


def ui_command(cfg: DictConfig) -> None:
    """The MLflow UI over this project's runs: `mlflow ui` on tracking.uri, bound to ui.host
    (127.0.0.1 by default). With an http:// tracking URI the server is already the UI."""
    import mlflow

    from alignbench.tracking.mlflow_runs import experiment_links, set_uri

    try:
        check_settings(cfg)
        if not 0 < cfg.ui.port < 65536:
            raise ConfigError(f"ui.port={cfg.ui.port}: must be a port number, 1 to 65535")
    except ConfigError as exc:
        fail(str(exc))
    from alignbench.tracking.store import StoreError

    try:
        set_uri(cfg.tracking.uri)  # null: MLflow's default (MLFLOW_TRACKING_URI, else ./mlflow.db), created if missing
    except StoreError as exc:
        fail(str(exc))
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"alignbench: runs are served by the tracking server: open {uri}")
        return
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", str(cfg.ui.host), "--port", str(cfg.ui.port)]
    links = experiment_links(f"http://{cfg.ui.host}:{cfg.ui.port}")  # each on its runs and comparison columns
    if links:  # first, the address to open: MLflow's own root and experiment pages open on its GenAI views
        print(f"open {links[0][1]}  ({links[0][0]}: its runs)", flush=True)
    print(f"alignbench: MLflow UI on http://{cfg.ui.host}:{cfg.ui.port} ({uri}); Ctrl-C stops it", flush=True)
    for name, url in links:
        print(f"  {name}: {url}", flush=True)
    os.execv(sys.executable, cmd)  # the UI replaces this process: Ctrl-C and signals go straight to it


COMMANDS = {"train": train_command, "sweep": sweep_command, "report": report_command, "ui": ui_command}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    interrupt_on_sigterm()  # first: a signal during start-up (the imports take seconds) ends in one line too
    try:
        run_command(argv[0], argv[1:])
    except KeyboardInterrupt as exc:
        exit_interrupted(argv[0], exc)


def run_command(command: str, rest: list[str]) -> None:
    """One subcommand; its user-facing errors end in one line and exit status 2."""
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if command == "bench":
        from alignbench.bench.main import main as bench_main

        bench_main(rest)  # its results dict is not returned: the console script would exit 1 with it
        return
    if command == "calibrate":  # its own arguments, then train overrides (`bench/calibration.py`)
        from alignbench.bench.calibration import main as calibrate_main

        calibrate_main(rest)
        return
    if command not in COMMANDS:
        fail(f"unknown command {command!r} (choose from train, sweep, report, ui, bench, calibrate; alignbench --help)")
    try:
        check_overrides([a for a in rest if not a.startswith("-")])
    except ConfigError as exc:
        fail(str(exc))
    if command == "sweep" and not any(a.startswith("sweep=") for a in rest):
        rest = ["sweep=default", *rest]
    setup_logging()
    quiet_libraries()
    register()
    app = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)(COMMANDS[command])
    sys.argv = [f"alignbench {command}", *rest]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors to us (one line below) instead of printing three
    try:
        app()
    except (HydraException, OmegaConfBaseException) as exc:  # bad override syntax, unknown key, broken interpolation
        fail(one_line(exc) if not isinstance(exc, OverrideParseException)
             else f"{unparsable([a for a in rest if not a.startswith('-')])}: {one_line(exc)}")


def unparsable(overrides: list[str]) -> str:
    """The first override Hydra's grammar rejects (its parse error does not say which)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for item in overrides:
        try:
            parser.parse_override(item)
        except Exception:  # noqa: BLE001 — the grammar's own errors
            return item
    return " ".join(overrides)


if __name__ == "__main__":
    main()
