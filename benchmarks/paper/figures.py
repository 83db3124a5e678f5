"""Figures 2-5 of the paper, drawn from measured results with matplotlib (Agg backend)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

import torchinvariance as ti
from benchmarks._common import atomic_write
from benchmarks.paper.labels import GROUP_LABELS, MODEL_LABELS, group_label

MODEL_COLORS = {
    "DA": "tab:red",
    "WT": "tab:blue",
    "IR-l2": "tab:green",
    "IR-kl": "tab:purple",
    "IR-normalized_l2": "tab:olive",
}


def _save(fig: plt.Figure, path: Path) -> None:
    """Render ``fig`` as PNG in memory, close it, and write the bytes atomically."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write(path, buf.getvalue())


def realigned_saliency(model: nn.Module, group: ti.Group, x: Tensor) -> tuple[Tensor, Tensor]:
    """Saliency maps of every orbit element of ``x`` (B, C, H, W), re-aligned with ``g^-1``.

    Returns ``(orbit_images (n, B, H, W), maps (n, B, H, W))``; the target class of every map is the
    prediction on ``x`` itself, as in the SI metric.
    """
    with torch.no_grad():
        target = model(x).argmax(1)
    orbit = group.orbit(x)  # (n, B, C, H, W)
    n, b = orbit.shape[:2]
    maps = ti.saliency_map(model, orbit.reshape(n * b, *x.shape[1:]), target=target.repeat(n))
    maps = maps.reshape(n, b, *maps.shape[1:])
    aligned = torch.stack([group.act(group.inverse(g), maps[i]) for i, g in enumerate(group.elements())])
    return orbit.sum(2), aligned


def figure3(models: dict[str, nn.Module], group: ti.Group, x: Tensor, path: Path) -> None:
    """Saliency maps over the orbit (re-aligned) for DA vs IR: rows = samples, columns = group elements."""
    names = [m for m in ("DA", "IR-l2") if m in models]
    b, n = x.shape[0], group.order
    fig, axes = plt.subplots(b * len(names), n + 1, figsize=(1.6 * (n + 1), 1.6 * b * len(names)), squeeze=False)
    for mi, name in enumerate(names):
        images, maps = realigned_saliency(models[name], group, x)
        for s in range(b):
            row = mi * b + s
            axes[row, 0].imshow(images[0, s].cpu().numpy(), cmap="gray")
            axes[row, 0].set_ylabel(f"{MODEL_LABELS[name]}\nsample {s}", fontsize=8)
            for i, g in enumerate(group.elements()):
                axes[row, i + 1].imshow(maps[i, s].detach().cpu().numpy(), cmap="inferno")
                if row == 0:
                    axes[row, i + 1].set_title(f"$g^{{-1}} m(gx)$, g={group.element_name(g)}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("input x", fontsize=7)
    fig.suptitle(f"Figure 3: saliency over the {group_label(group.name)} orbit, re-aligned")
    _save(fig, path)


def figure4(drift: dict, path: Path) -> None:
    """DI (left axis, solid) and accuracy-drop ratio (right axis, dashed) over the drift beta."""
    groups = [g for g in ("rotation", "translation") if g in drift]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False)
    for ax, g in zip(axes[0], groups):
        ax2 = ax.twinx()
        for m in ("DA", "WT", "IR-l2"):
            curve = drift[g].get(m)
            if not curve:
                continue
            betas = [p["beta"] for p in curve]
            color, label = MODEL_COLORS[m], MODEL_LABELS[m]
            ax.plot(betas, [p["di"] for p in curve], "-o", ms=3, color=color, label=f"{label} DI")
            ax2.plot(betas, [p["acc_ratio"] for p in curve], "--", color=color, label=f"{label} acc")
        ax.set_xlabel(r"drift $\beta$  (MNIST $\rightarrow$ FMNIST)")
        ax.set_ylabel("DI (KL)")
        ax2.set_ylabel(r"Acc$(D(\beta))$ / Acc$(D(0))$")
        ax.set_title(GROUP_LABELS[g])
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best", framealpha=0.8)
    fig.suptitle("Figure 4: invariance and accuracy under distribution drift")
    fig.tight_layout()
    _save(fig, path)


def figure5(agg: dict, path: Path) -> None:
    """sigma_max of the input Jacobian: DA vs IR with the KL, L2 and normalized-L2 regularizers."""
    models = ["DA", "IR-kl", "IR-l2", "IR-normalized_l2"]
    groups = [g for g in ("rotation", "translation") if g in agg]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.5), squeeze=False)
    for ax, g in zip(axes[0], groups):
        present = [m for m in models if m in agg[g]]
        means = [agg[g][m]["sigma_max"]["mean"] for m in present]
        stds = [agg[g][m]["sigma_max"]["std"] for m in present]
        ax.bar(
            range(len(present)),
            means,
            yerr=stds,
            color=[MODEL_COLORS[m] for m in present],
            capsize=3,
        )
        ax.set_xticks(range(len(present)), [MODEL_LABELS[m] for m in present], fontsize=8)
        ax.set_ylabel(r"$\sigma_{max}(J)$")
        ax.set_title(GROUP_LABELS[g])
    fig.suptitle("Figure 5: invariance-induced spectral decay")
    fig.tight_layout()
    _save(fig, path)


def figure2(models: dict[str, nn.Module], group: ti.Group, x: Tensor, y: Tensor, path: Path, seed: int) -> None:
    """t-SNE of the penultimate layer over orbits, DA vs IR; lines join the orbit of a few samples."""
    from sklearn.manifold import TSNE

    names = [m for m in ("DA", "IR-l2") if m in models]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.5), squeeze=False)
    n, b = group.order, x.shape[0]
    for ax, name in zip(axes[0], names):
        with torch.no_grad():
            feats = ti.orbit_forward(models[name].features, group, x).reshape(n * b, -1).cpu()
        emb = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, n * b // 4)).fit_transform(
            feats.numpy()
        )
        emb = emb.reshape(n, b, 2)
        labels = y.repeat(n).cpu().numpy()
        ax.scatter(emb[..., 0].reshape(-1), emb[..., 1].reshape(-1), c=labels, cmap="tab10", s=6)
        for s in range(min(5, b)):
            ring = [*list(range(n)), 0]
            ax.plot(emb[ring, s, 0], emb[ring, s, 1], "k-", lw=0.6)
        ax.set_title(f"{MODEL_LABELS[name]}: penultimate layer")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Figure 2: t-SNE over {group_label(group.name)} orbits (lines: one orbit)")
    _save(fig, path)
