"""Run profiles: how much of the paper's protocol each one runs.

``paper`` is the §4.1 protocol with one seed, ``full`` the same with the paper's 4 seeds (mean ± std). ``quick`` is
a labelled 40-epoch demo, NOT the protocol; ``smoke`` checks that every stage runs. Each profile tunes its nu at
its own length (``tune --profile NAME`` trains the grid for ``epochs`` epochs), and ``run`` reads only that
profile's values unless ``--nu-from`` names another profile explicitly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

NU_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


@dataclass(frozen=True)
class Profile:
    """Settings of one profile.

    Attributes:
        name: the profile's name (``--profile``), also the section of ``nu.json`` it reads and writes.
        epochs: training epochs of every run AND of every point of the nu sweep.
        seeds: run seeds (offset by ``--seed``); the runs of one (group, model kind) train as one ensemble.
        sizes: train / test / validation samples, in the paper's split order.
        batch_size: mini-batch size (paper: 512).
        lr: Adam's learning rate (paper: 8e-4).
        eval_test: test samples for accuracy, DI and LI (``None``: the whole test split).
        eval_si: test samples for SI (integrated gradients over the orbit is the expensive part).
        eval_jacobian: test samples for sigma_max of the input Jacobian.
        drift_n: test samples per drift level (Figure 4).
        tune_si: validation samples for SI in the nu sweep.
        nu_grid: the nu values of the sweep, trained together as one ensemble per (group, divergence).
        detached_variant: also train ``IR-normalized_l2_detached`` (normalized L2 with a detached denominator,
            a finding of issue 10, not a model of the paper); ``--detached`` / ``--no-detached`` override it.
        saliency_samples: rows of Figure 3.
        tsne_samples: samples (times their orbit) in Figure 2.
        demo: a label printed with the results: the profile is NOT the paper's protocol.
    """

    name: str
    epochs: int
    seeds: tuple[int, ...]
    sizes: tuple[int, int, int]
    batch_size: int = 512
    lr: float = 8e-4
    eval_test: int | None = None
    eval_si: int = 2000
    eval_jacobian: int = 1000
    drift_n: int = 5000
    tune_si: int = 2000
    nu_grid: tuple[float, ...] = NU_GRID
    detached_variant: bool = False
    saliency_samples: int = 4
    tsne_samples: int = 200
    demo: str = ""

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
        tune_si=64,
        # two values; at 2 epochs the smaller one keeps every regularizer above the tune's accuracy guard (measured
        # on CPU: normalized L2 at nu = 1 falls to chance), so every stage, every IR model included, runs
        nu_grid=(0.1, 10.0),
        saliency_samples=2,
        tsne_samples=32,
        demo="smoke test: 2 epochs on small subsets, its numbers mean nothing",
    ),
    "quick": Profile(
        name="quick",
        epochs=40,
        seeds=(0,),
        sizes=(10_000, 50_000, 2_000),
        eval_si=1000,
        eval_jacobian=500,
        tune_si=500,
        demo="40-epoch demo, not the paper's protocol (300 epochs): the models are still improving at epoch 40",
    ),
    "paper": Profile(
        name="paper",
        epochs=300,
        seeds=(0,),
        sizes=(10_000, 50_000, 2_000),
        detached_variant=True,
    ),
    "full": Profile(
        name="full",
        epochs=300,
        seeds=(0, 1, 2, 3),
        sizes=(10_000, 50_000, 2_000),
        detached_variant=True,
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; :class:`ValueError` listing the valid ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}") from None
