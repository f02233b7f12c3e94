"""Plot the eigenvalues Λ of every recurrent layer in the complex plane, with the unit circle."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch


def plot_spectra(spectra: dict[str, torch.Tensor], path: Path, title: str = "") -> Path:
    """One panel per layer: Re λ vs Im λ, the unit circle dashed. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(spectra))
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    circle = torch.exp(1j * torch.linspace(0, 2 * math.pi, 361))
    for ax, (name, lam) in zip(axes.flat, spectra.items()):
        lam = lam.detach().cpu().to(torch.complex64).flatten()
        ax.plot(circle.real, circle.imag, "k--", lw=0.6)
        ax.scatter(lam.real, lam.imag, s=4, alpha=0.6)
        ax.set_title(f"{name}  (max |λ| = {lam.abs().max():.4f})", fontsize=8)
        ax.set_aspect("equal")
        ax.set_xlim(-1.1, 1.1)
        ax.set_ylim(-1.1, 1.1)
    for ax in list(axes.flat)[len(spectra):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class SpectrumPlot(L.Callback):
    """At fit start and after every validation: ``plots/spectrum_step{N}.png``, and to W&B."""

    def __init__(self, plot_dir: str | Path) -> None:
        self.plot_dir = Path(plot_dir)

    def _plot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        from ssm_train.distributed import gathered_parameters

        with gathered_parameters(pl_module.model):  # a collective under fsdp / ZeRO-3: every rank enters
            spectra = pl_module.model.eigenvalues() if trainer.is_global_zero else {}
        if not trainer.is_global_zero or not spectra:
            return
        step = trainer.global_step
        path = plot_spectra(spectra, self.plot_dir / f"spectrum_step{step:07d}.png", f"eigenvalues at step {step}")
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # WandbLogger
                logger.log_image(key="spectrum", images=[str(path)], step=step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._plot(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._plot(trainer, pl_module)
