"""Every TensorBoard diagnostic at its default interval, for code that builds a Trainer itself.
(From YAML, list them under `trainer.callbacks`; see configs/volatility.yaml.)"""

from lightning.pytorch import Callback

from forecasting.callbacks.forecast_plot import ForecastPlot
from forecasting.callbacks.gate_saturation import GateSaturation
from forecasting.callbacks.grad_flow import GradientFlow
from forecasting.callbacks.grad_histograms import GradientHistograms
from forecasting.callbacks.grad_norms import GradientNorms
from forecasting.callbacks.hparams import HParamsMetric
from forecasting.callbacks.nonfinite_guard import NonFiniteGuard


def diagnostics() -> list[Callback]:
    return [
        NonFiniteGuard(),
        GradientNorms(),
        GradientHistograms(),
        GradientFlow(),
        GateSaturation(),
        ForecastPlot(),
        HParamsMetric(),
    ]
