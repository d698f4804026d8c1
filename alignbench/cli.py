"""`alignbench {train,sweep,report,ui,bench} [hydra overrides]` — a thin shell over plain functions.

Each subcommand is a Hydra app over conf/ (so `--help`, `--cfg job` and overrides behave as in
any Hydra app); the work is done by `train.train`, `sweep.run_sweep`, `report.build_report`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from alignbench.config import CONF_DIR, ConfigError, check_overrides, validate
from alignbench.process import fail, interrupt_on_sigterm, quiet_libraries, setup_logging

USAGE = """usage: alignbench {train,sweep,report,ui,bench} [hydra overrides]

  train   one run, tracked in MLflow          alignbench train method=ipo method.tau=0.3
  sweep   Optuna studies across methods       alignbench sweep sweep=smoke
  report  comparison report of a sweep        alignbench report report.sweep=smoke
  ui      the MLflow UI on 127.0.0.1          alignbench ui ui.port=5000
  bench   speed benchmark vs TRL (bench.json) alignbench bench

Add --help after a subcommand for its config groups and options."""


def train_command(cfg: DictConfig) -> None:
    from alignbench.tracking import mlflow_runs as tracking
    from alignbench.data.records import DataError
    from alignbench.tracking.null import NullTracker
    from alignbench.training.run import train

    from accelerate import PartialState

    try:
        validate(cfg)
        # Under `accelerate launch` every process trains; only the main one records the run.
        if cfg.tracking.enabled and PartialState().is_main_process:
            with tracking.tracked_run(cfg.tracking.experiment, cfg.tracking.run_name, tags={"method": cfg.method.name},
                                      async_logging=cfg.tracking.async_logging, uri=cfg.tracking.uri) as tracker:
                result = train(cfg, tracker)
                run_id = tracker.run_id
        else:
            result, run_id = train(cfg, NullTracker()), None
    except (ConfigError, DataError) as exc:
        fail(str(exc))
    m = result.metrics
    print(f"method={cfg.method.name} win_rate={m['eval/win_rate']:.3f} "
          f"95% CI [{m['eval/win_rate_ci_low']:.3f}, {m['eval/win_rate_ci_high']:.3f}] "
          f"KL={m['eval/kl']:.2f} nats/seq ({m['eval/kl_per_token']:.3f}/token)"
          + (f" gold={m['eval/gold_reward']:.3f} (ref {m['eval/reference_gold_reward']:.3f})" if "eval/gold_reward" in m else "")
          + (f" mlflow_run={run_id}" if run_id else ""))


def sweep_command(cfg: DictConfig) -> None:
    from alignbench.sweep.run import SweepFailed, run_sweep

    try:
        run_sweep(cfg)
    except ConfigError as exc:
        fail(str(exc))
    except SweepFailed as exc:  # the summary is printed; the exit status says the sweep is not complete
        fail(str(exc), code=1)


def report_command(cfg: DictConfig) -> None:
    from alignbench.report.build import build_report

    try:
        path = build_report(cfg)
    except (ConfigError, LookupError) as exc:
        fail(str(exc))
    print(f"report: {path}")


def ui_command(cfg: DictConfig) -> None:
    """The MLflow UI over this project's runs: `mlflow ui` on tracking.uri, bound to ui.host
    (127.0.0.1 by default). With an http:// tracking URI the server is already the UI."""
    import os

    import mlflow

    from alignbench.tracking.mlflow_runs import set_uri

    set_uri(cfg.tracking.uri)  # null: MLflow's default (MLFLOW_TRACKING_URI, else ./mlflow.db), created if missing
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"alignbench: runs are served by the tracking server: open {uri}")
        return
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", str(cfg.ui.host), "--port", str(cfg.ui.port)]
    print(f"alignbench: MLflow UI on http://{cfg.ui.host}:{cfg.ui.port} ({uri}); Ctrl-C stops it", flush=True)
    os.execv(sys.executable, cmd)  # the UI replaces this process: Ctrl-C and signals go straight to it


COMMANDS = {"train": train_command, "sweep": sweep_command, "report": report_command, "ui": ui_command}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "bench":
        from alignbench.bench.main import main as bench_main

        bench_main(rest)
        return
    if command not in COMMANDS:
        fail(f"unknown command {command!r}\n{USAGE}")
    try:
        check_overrides([a for a in rest if not a.startswith("-")])
    except ConfigError as exc:
        fail(str(exc))
    if command == "sweep" and not any(a.startswith("sweep=") for a in rest):
        rest = ["sweep=default", *rest]
    setup_logging()
    quiet_libraries()
    interrupt_on_sigterm()
    app = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)(COMMANDS[command])
    sys.argv = [f"alignbench {command}", *rest]
    app()


if __name__ == "__main__":
    main()
