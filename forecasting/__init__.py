"""A PyTorch Lightning template for forecasting financial time series with stacked LSTMs."""

__version__ = "0.1.0"
