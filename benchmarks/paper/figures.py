"""Figures 2-5 of the paper, drawn from measured results.

Figures 3, 4 and 5 are the library's own (:mod:`torchinvariance.plot`: ``saliency_orbit``, ``drift``,
``spectral``); this module picks the models, labels and colors of the paper and writes the PNG files. Figure 2
(t-SNE) needs scikit-learn and stays here. Figures are :class:`matplotlib.figure.Figure` objects made without
pyplot, so no backend is switched and nothing is left open.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor, nn

import torchinvariance as ti
from benchmarks._common import atomic_write
from benchmarks.paper.labels import DETACHED, GROUP_LABELS, MODEL_LABELS, group_label

MODEL_COLORS = {
    "DA": "tab:red",
    "WT": "tab:blue",
    "IR-l2": "tab:green",
    "IR-kl": "tab:purple",
    "IR-normalized_l2": "tab:olive",
    DETACHED: "tab:brown",
}


def _save(fig, path: Path) -> None:
    """Render ``fig`` as PNG in memory and write the bytes atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, buf.getvalue())


def figure3(models: dict[str, nn.Module], group: ti.Group, x: Tensor, path: Path) -> None:
    """Saliency maps over the orbit (re-aligned) for DA vs IR: rows = samples, columns = group elements."""
    chosen = {MODEL_LABELS[m]: models[m] for m in ("DA", "IR-l2") if m in models}
    fig = ti.plot.saliency_orbit(
        chosen, group, x, title=f"Figure 3: saliency over the {group_label(group.name)} orbit, re-aligned"
    )
    _save(fig, path)


def figure4(drift: dict, path: Path) -> None:
    """DI (left axis, solid) and accuracy-drop ratio (right axis, dashed) over the drift beta."""
    groups = [g for g in ("rotation", "translation") if g in drift]
    fig, axes = _figure(1, len(groups), (5.5 * len(groups), 3.8))
    for ax, g in zip(axes[0], groups):
        curves = {MODEL_LABELS[m]: drift[g][m] for m in ("DA", "WT", "IR-l2") if drift[g].get(m)}
        colors = {MODEL_LABELS[m]: MODEL_COLORS[m] for m in ("DA", "WT", "IR-l2")}
        ti.plot.drift(
            curves, ax=ax, colors=colors, title=GROUP_LABELS[g], xlabel=r"drift $\beta$  (MNIST $\rightarrow$ FMNIST)"
        )
    fig.suptitle("Figure 4: invariance and accuracy under distribution drift")
    _save(fig, path)


def figure5(agg: dict, path: Path) -> None:
    """sigma_max of the input Jacobian: DA vs IR with the KL, L2 and normalized-L2 regularizers (and variants)."""
    models = ["DA", "IR-kl", "IR-l2", "IR-normalized_l2", DETACHED]
    groups = [g for g in ("rotation", "translation") if g in agg]
    fig, axes = _figure(1, len(groups), (4.5 * len(groups), 3.5))
    for ax, g in zip(axes[0], groups):
        present = [m for m in models if m in agg[g]]
        short = {**MODEL_LABELS, DETACHED: "IR (norm. L2, detached)\nnot in the paper"}
        ti.plot.spectral(
            {short[m]: agg[g][m]["sigma_max"] for m in present},
            ax=ax,
            colors={short[m]: MODEL_COLORS[m] for m in present},
            title=GROUP_LABELS[g],
        )
    fig.suptitle("Figure 5: invariance-induced spectral decay")
    _save(fig, path)


def figure2(models: dict[str, nn.Module], group: ti.Group, x: Tensor, y: Tensor, path: Path, seed: int) -> None:
    """t-SNE of the penultimate layer over orbits, DA vs IR; lines join the orbit of a few samples."""
    from sklearn.manifold import TSNE

    names = [m for m in ("DA", "IR-l2") if m in models]
    fig, axes = _figure(1, len(names), (5 * len(names), 4.5))
    n, b = group.order, x.shape[0]
    for ax, name in zip(axes[0], names):
        with torch.no_grad():
            feats = ti.orbit_forward(models[name].features, group, x).reshape(n * b, -1).cpu()
        emb = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, n * b // 4)).fit_transform(
            feats.numpy()
        )
        emb = emb.reshape(n, b, 2)
        labels = y.repeat(n).cpu().numpy()
        points = ax.scatter(
            emb[..., 0].reshape(-1), emb[..., 1].reshape(-1), c=labels, cmap="tab10", s=8, vmin=0, vmax=9
        )
        for s in range(min(5, b)):
            ring = [*list(range(n)), 0]
            ax.plot(emb[ring, s, 0], emb[ring, s, 1], "-", color="black", lw=1.4, marker="o", ms=3.5, zorder=3)
        handles, _ = points.legend_elements()
        classes = sorted({int(c) for c in labels})
        ax.legend(
            handles[: len(classes)],
            [f"class {c}" for c in classes],
            fontsize=6,
            title="digit",
            title_fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            frameon=False,
        )
        ax.set_title(f"{MODEL_LABELS[name]}: penultimate layer")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Figure 2: t-SNE over {group_label(group.name)} orbits (lines: one orbit)")
    _save(fig, path)


def _figure(nrows: int, ncols: int, figsize: tuple[float, float]):
    """A pyplot-free figure and its axes array, as the library's plots make them."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, max(ncols, 1), squeeze=False)
