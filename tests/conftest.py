"""Shared test fixtures: a tiny tokenizer, a shared cache, a fresh working directory (what the
fixtures use lives in helpers.py)."""

from __future__ import annotations

import os

import pytest

from helpers import count_calls, make_tiny_tokenizer
from pg import mlflow_server, pg_url, postgres  # noqa: F401  (PostgreSQL / MLflow server fixtures)


if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: one torch thread each (and in the CLI
    # subprocesses they start), or the workers' thread pools fight over the cores.
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def reward_model_trainings(monkeypatch):
    """The reward models actually trained during the test, one entry per `train_reward_model` call."""
    from alignbench.models import reward_model

    return count_calls(monkeypatch, reward_model, "train_reward_model")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One cache for the session: the tiny SFT model is trained once, then every test reuses it."""
    path = tmp_path_factory.mktemp("alignbench_cache")
    os.environ["ALIGNBENCH_CACHE"] = str(path)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch, shared_cache):
    """Run in a fresh directory (its own mlflow.db) with the shared cache."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def fresh_mlflow_uri():
    """Each test starts on MLflow's default store (its cwd's mlflow.db): a URI set by an earlier
    test (mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI) must not leak into the next."""
    import mlflow

    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
