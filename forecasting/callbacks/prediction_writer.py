"""Write `predict` forecasts as a CSV of dated forecasts per ticker, in original units."""

from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info


class PredictionWriter(BasePredictionWriter):
    """One row per (sample, h): the columns the data module's `describe_rows` gives (date and ticker
    for price files: the forecast made after the close of `date` for h trading days ahead; the sample
    index by default), then h, target, the forecast, the forecast distribution's columns where the
    head has them (loc, scale, df, or one per quantile: q05, q50, ...; conformal_lo_90, conformal_hi_90,
    ...: split-conformal intervals, calibration.py) and the actual value where it is known.

    output: CSV path; default `<log dir>/predictions.csv`.
    conformal: write the conformal_* columns; null: only for a distribution head (model.head), so a
    point head's CSV keeps its plain columns; true: for every head, point included.
    """

    def __init__(self, output: str | None = None, conformal: bool | None = None):
        super().__init__(write_interval="epoch")
        self.output, self.conformal = output, conformal

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        rows = torch.cat([p["row"] for p in predictions]).cpu()
        forecast = torch.cat([p["forecast"] for p in predictions]).float().cpu()
        actual = torch.cat([p["actual"] for p in predictions]).float().cpu()
        point = getattr(getattr(pl_module, "head", None), "family", "point") == "point"
        keep_conformal = self.conformal if self.conformal is not None else not point
        names = [n for n in predictions[0].get("columns", {}) if keep_conformal or not n.startswith("conformal_")]
        extra = {n: torch.cat([p["columns"][n] for p in predictions]).float().cpu() for n in names}
        # Under DDP each rank predicted a share of the windows: gather them so rank 0 writes one
        # complete file. Every rank runs both collectives (log_dir broadcasts) before the others return.
        output = Path(self.output or Path(trainer.log_dir or ".") / "predictions.csv")
        if trainer.world_size > 1:
            shares = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, (rows, forecast, actual, extra))
            rows, forecast, actual = (torch.cat(parts) for parts in list(zip(*shares, strict=True))[:3])
            extra = {n: torch.cat([share[3][n] for share in shares]) for n in names}
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        where = dm.describe_rows(rows).reset_index(drop=True)  # e.g. date and ticker; the sample id by default
        horizon = forecast.shape[1]
        table = where.loc[where.index.repeat(horizon)].reset_index(drop=True)
        table["h"] = list(range(1, horizon + 1)) * len(rows)
        table["target"] = getattr(dm, "target", "target")
        table["forecast"] = forecast.reshape(-1).numpy()
        for name, values in extra.items():
            table[name] = values.reshape(-1).numpy()
        table["actual"] = actual.reshape(-1).numpy()
        order = [c for c in ("ticker", "date") if c in where] or list(where.columns)
        table = table.sort_values([*order, "h"], kind="stable")
        output.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(output, index=False)
        self.written = output
        rank_zero_info(f"wrote {len(table)} forecasts to {output}")
