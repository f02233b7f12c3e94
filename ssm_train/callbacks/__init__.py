"""Lightning callbacks of ssm-train (training layer)."""

from ssm_train.callbacks.spectrum import SpectrumPlot, plot_spectra

__all__ = ["SpectrumPlot", "plot_spectra"]
