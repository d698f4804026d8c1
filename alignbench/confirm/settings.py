"""`ConfirmSettings`: how a sweep's selections are confirmed and compared, one frozen value built once,
from the sweep config (`sweep.plan.plan_sweep`) or from what a sweep logged on its parent run
(`from_logged`, the report's way), so the sweep and its report run the same race."""

from __future__ import annotations

from dataclasses import dataclass

CONFIRM_MODES = ("full", "race")  # every seed for every method | seed by seed until the order is settled
RACE_KEYS = ("min_seeds", "min_effect", "spending", "futility")  # logged as sweep.race.<key>


@dataclass(frozen=True)
class ConfirmSettings:
    """`mode`: full or race. `seeds`: K, the confirmation seeds per method, seed+1 .. seed+K (a race:
    at most K; 0 = no confirmation). The race's rule (`racing.race`): `min_seeds` before the first
    look, `min_effect` (equivalence margin), `spending` (alpha spending), `futility` (conditional
    power below which a pair stops), `alpha`. `rng_seed` seeds the bootstrap draws: a race's looks
    depend on it, so the report replays a race with the sweep's own seed."""

    mode: str = "full"
    seeds: int = 0
    min_seeds: int = 2
    min_effect: float = 0.05
    spending: str = "obrien_fleming"
    futility: float = 0.1
    alpha: float = 0.05
    rng_seed: int = 0

    @property
    def raced(self) -> bool:
        return self.mode == "race"

    def race_params(self) -> dict:
        """The race's settings a sweep logs (`sweep.race.<key>`) and a raced summary shows; {} for full."""
        return {k: getattr(self, k) for k in RACE_KEYS} if self.raced else {}

    def logged_params(self) -> dict:
        """What a sweep logs of these settings on its parent run (`from_logged` reads them back; the
        seed is logged as `sweep.seed` with the rest of the sweep)."""
        return {"sweep.confirm_seeds": self.seeds, "sweep.confirm": self.mode,
                **{f"sweep.race.{k}": v for k, v in self.race_params().items()}}

    @classmethod
    def from_logged(cls, params: dict, report_seed: int) -> "ConfirmSettings":
        """The settings a sweep ran with, from its parent run's params (strings). A full confirmation
        is bootstrapped with the report's own seed (`report_seed`); a race with the sweep's seed, so
        that its looks stop where the sweep's did. Sweeps older than a key get the value they ran
        with then (no futility stops before `sweep.race.futility` existed)."""
        seeds = params.get("sweep.confirm_seeds")
        seeds = int(seeds) if str(seeds).isdigit() else 0
        if params.get("sweep.confirm") != "race":
            return cls(mode="full", seeds=seeds, rng_seed=report_seed)
        return cls(mode="race", seeds=seeds, min_seeds=int(params.get("sweep.race.min_seeds") or 2),
                   min_effect=float(params.get("sweep.race.min_effect") or 0.05),
                   spending=params.get("sweep.race.spending") or "obrien_fleming",
                   futility=float(params.get("sweep.race.futility") or 0.0),
                   rng_seed=int(params.get("sweep.seed") or 0))
