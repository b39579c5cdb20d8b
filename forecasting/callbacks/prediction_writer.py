"""Write `predict` forecasts as a CSV of dated forecasts per ticker, in original units."""

from pathlib import Path

import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info


class PredictionWriter(BasePredictionWriter):
    """One row per (date, ticker, h): the forecast made after the close of `date` for
    h trading days ahead, and the actual value where the file already has it.

    output: CSV path; default `<log dir>/predictions.csv`.
    """

    def __init__(self, output: str | None = None):
        super().__init__(write_interval="epoch")
        self.output = output

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        rows = torch.cat([p["row"] for p in predictions]).cpu()
        forecast = torch.cat([p["forecast"] for p in predictions]).float().cpu()
        actual = torch.cat([p["actual"] for p in predictions]).float().cpu()
        # Under DDP each rank predicted a share of the windows: gather them so rank 0 writes one
        # complete file. Every rank runs both collectives (log_dir broadcasts) before the others return.
        output = Path(self.output or Path(trainer.log_dir or ".") / "predictions.csv")
        if trainer.world_size > 1:
            shares = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, (rows, forecast, actual))
            rows, forecast, actual = (torch.cat(parts) for parts in zip(*shares, strict=True))
        if not trainer.is_global_zero:
            return
        where = trainer.datamodule.describe_rows(rows)
        horizon = forecast.shape[1]
        table = pd.DataFrame(
            {
                "date": where["date"].repeat(horizon).to_numpy(),
                "ticker": where["ticker"].repeat(horizon).to_numpy(),
                "h": list(range(1, horizon + 1)) * len(rows),
                "target": trainer.datamodule.target,
                "forecast": forecast.reshape(-1).numpy(),
                "actual": actual.reshape(-1).numpy(),
            }
        ).sort_values(["ticker", "date", "h"], kind="stable")
        output.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(output, index=False)
        self.written = output
        rank_zero_info(f"wrote {len(table)} forecasts to {output}")
