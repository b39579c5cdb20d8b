"""What a run ends with: the best checkpoint, how it did against the baselines, whether it copies,
and the commands to look further. Printed when `fit` and `test` end (rank zero).

    fit: best checkpoint logs/volatility/version_0/checkpoints/epoch008-val_loss0.3695.ckpt (epoch 8; 15 epochs trained)
      val/loss 0.3695; skill vs naive +0.310, mean +0.768, har +0.010 (above 0: beats that baseline)
      copying: best lag 0, corr with last input 0.78, forecast std / target std 0.62
      look:  tensorboard --logdir logs/volatility
      test:  python -m forecasting test --config logs/volatility/version_0/config.yaml --ckpt_path <best>
"""

from pathlib import Path

from lightning.pytorch import Callback

BASELINES = ("naive", "mean", "har", "garch")


def skills(metrics: dict, stage: str) -> str:
    parts = [f"{b} {float(metrics[f'{stage}/skill_vs_{b}']):+.3f}" for b in BASELINES if f"{stage}/skill_vs_{b}" in metrics]
    return "skill vs " + ", ".join(parts) + " (above 0: beats that baseline)" if parts else "no baselines"


def copying(metrics: dict) -> str | None:
    keys = {"val/best_lag": "best lag {:.0f}", "val/corr_with_last_input": "corr with last input {:.2f}",
            "val/pred_std_ratio": "forecast std / target std {:.2f}"}  # fmt: skip
    parts = [fmt.format(float(metrics[k])) for k, fmt in keys.items() if k in metrics]
    return ", ".join(parts) if parts else None


class RunSummary(Callback):
    """monitor / mode: how the best validation epoch is chosen (as the checkpoint does)."""

    def __init__(self, monitor: str = "val/loss", mode: str = "min"):
        self.monitor, self.mode = monitor, mode
        self.best: dict | None = None  # the val/* metrics of the best epoch so far

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        value = metrics[self.monitor]
        better = self.best is None or (value < self.best[self.monitor] if self.mode == "min" else value > self.best[self.monitor])
        if better:
            self.best = {**metrics, "epoch": trainer.current_epoch}

    def on_fit_end(self, trainer, pl_module):
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero:
            return
        lines = []
        checkpoint = trainer.checkpoint_callback
        best_path = getattr(checkpoint, "best_model_path", "") or ""
        if self.best is not None:
            where = f" {best_path}" if best_path else " (no checkpoint saved)"
            lines.append(f"fit: best checkpoint{where} (epoch {self.best['epoch']}; {trainer.current_epoch} epochs trained)")
            lines.append(f"  {self.monitor} {self.best[self.monitor]:.4g}; {skills(self.best, 'val')}")
            copy = copying(self.best)
            if copy:
                lines.append(f"  copying: {copy}")
        else:
            lines.append(f"fit: no validation ran, so no best epoch ({self.monitor} never logged)")
        lines += self.look(trainer, log_dir, best_path)
        print("\n".join(lines), flush=True)

    def on_test_end(self, trainer, pl_module):
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        line = f"test: test/loss {metrics['test/loss']:.4g}; " if "test/loss" in metrics else "test: "
        print("\n".join([line + skills(metrics, "test"), *self.look(trainer, log_dir, None)]), flush=True)

    @staticmethod
    def look(trainer, log_dir: str | None, best_path: str | None) -> list[str]:
        logger = trainer.logger
        lines = []
        if logger is not None and getattr(logger, "save_dir", None):
            root = Path(logger.save_dir) / (logger.name or "")
            lines.append(f"  look:  tensorboard --logdir {root}")
            config = Path(log_dir or "") / "config.yaml"
            if best_path and config.is_file():
                lines.append(f"  test:  python -m forecasting test --config {config} --ckpt_path {best_path}")
        return lines
