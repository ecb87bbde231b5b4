"""Pictures people would rather look at than read: spectrogram grids."""

from __future__ import annotations

from pathlib import Path

import torch


def spectrogram_grid(rows: dict[str, torch.Tensor], column_titles: list[str], path: Path) -> Path:
    """One row per system, one column per sample (log-Mel images, low frequencies at the bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(v) for v in rows.values())
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.4 * n_cols + 1.2, 1.5 * n_rows + 0.4), squeeze=False)
    for r, (name, mels) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(mels):
                ax.imshow(mels[c].squeeze(0).cpu().numpy(), origin="lower", aspect="auto", cmap="magma", vmin=-1.5, vmax=3.0)
            if r == 0 and c < len(column_titles):
                ax.set_title(column_titles[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
    return path
