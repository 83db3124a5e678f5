"""Run profiles: how much of the paper's protocol each one runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Profile:
    """Settings of one profile. ``full`` is the paper's §4.1 protocol."""

    name: str
    epochs: int
    seeds: tuple[int, ...]
    sizes: tuple[int, int, int]  # train / test / val, as in the paper's split order
    batch_size: int = 512
    lr: float = 8e-4
    eval_test: int | None = None  # test samples for accuracy/DI/LI (None = all)
    eval_si: int = 2000  # test samples for SI (50-step IG over the orbit is the expensive part)
    eval_jacobian: int = 1000  # test samples for sigma_max of the input Jacobian
    drift_n: int = 5000  # test samples per drift level
    tune_epochs: int = 0  # epochs of the tune sweep (0 = same as epochs)
    tune_si: int = 1000  # validation samples for SI in the tune sweep
    nu_grid: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
    saliency_samples: int = 4  # rows of Figure 3
    tsne_samples: int = 200  # samples (x their orbit) in Figure 2
    est_minutes_cpu: float = 0.0  # rough estimate on a 2-core CPU, printed at start

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "smoke": Profile(
        name="smoke",
        epochs=2,
        seeds=(0,),
        sizes=(1024, 1024, 512),
        batch_size=256,
        eval_si=64,
        eval_jacobian=64,
        drift_n=256,
        tune_epochs=1,
        tune_si=64,
        nu_grid=(1.0, 10.0),
        saliency_samples=2,
        tsne_samples=32,
        est_minutes_cpu=1.5,
    ),
    "quick": Profile(
        name="quick",
        epochs=40,
        seeds=(0,),
        sizes=(10_000, 50_000, 2_000),
        eval_si=1000,
        eval_jacobian=500,
        drift_n=5000,
        tune_epochs=40,
        tune_si=500,
        est_minutes_cpu=30.0,
    ),
    "full": Profile(
        name="full",
        epochs=300,
        seeds=(0, 1, 2, 3),
        sizes=(10_000, 50_000, 2_000),
        eval_si=50_000,
        eval_jacobian=5_000,
        drift_n=50_000,
        tune_epochs=300,
        tune_si=2000,
        est_minutes_cpu=0.0,  # computed from quick's measured speed at start
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; :class:`ValueError` listing the valid ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}") from None
