"""Checkpoints that are never half-written, and never loaded blindly.

- `AtomicCheckpointIO` writes each checkpoint to a temporary file beside it and
  renames it into place, so a run killed while saving leaves the previous
  `last.ckpt` intact (Lightning's own writer truncates the file first).
- `check_checkpoint` opens a checkpoint with `torch.load(weights_only=True)`
  before a run uses it: a file whose pickle could run code is refused, and a
  checkpoint trained with other features, target, horizon or network shape is
  reported in one line instead of a size-mismatch traceback.
"""

import os
import pickle
import tempfile
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from forecasting.errors import ForecastingError

# Keys whose value must match between a checkpoint and the config that loads it; `net` is the
# whole network config (class_path and every init arg), whatever the network.
DATA_KEYS = ("features", "target", "horizon")
MODEL_KEYS = ("n_features", "horizon", "net")


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic on POSIX and Windows: old file or new file, never half
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def flatten(tree: dict, prefix: str = ""):
    """('init_args.hidden_sizes', [64, 32]) pairs of a nested dict."""
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def check_checkpoint(path: str, data: dict | None, model: dict | None) -> None:
    """Refuse an unsafe checkpoint, or one that does not fit the config's data and model keys."""
    if not Path(path).is_file():
        raise ForecastingError(f"ckpt_path: no checkpoint file at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ForecastingError(
            f"ckpt_path: {path} refused: it holds pickled objects that could run code when loaded "
            "(torch.load weights_only=True); only use checkpoints this template wrote, or ones you trust"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ForecastingError(f"ckpt_path: {path} is not a readable checkpoint ({str(err).splitlines()[0]})") from None

    def plain(value):
        if hasattr(value, "as_dict"):  # a jsonargparse Namespace (model.net in the config)
            value = value.as_dict()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

    trained_data = next((v for k, v in ckpt.items() if isinstance(v, dict) and "features" in v), None)
    for section, trained, wanted, keys in (
        ("data", trained_data, data, DATA_KEYS),
        ("model", ckpt.get("hyper_parameters"), model, MODEL_KEYS),
    ):
        for key in keys:
            if trained and wanted and key in trained and key in wanted and plain(trained[key]) != plain(wanted[key]):
                was, now = plain(trained[key]), plain(wanted[key])
                if isinstance(was, dict) and isinstance(now, dict):  # name the first differing entry
                    was, now = (dict(flatten(was)), dict(flatten(now)))
                    key += "." + next(k for k in sorted({*was, *now}) if was.get(k) != now.get(k))
                    was, now = was.get(key.split(".", 1)[1]), now.get(key.split(".", 1)[1])
                raise ForecastingError(
                    f"ckpt_path: {path} was trained with {section}.{key}={was!r}, but the config has "
                    f"{now!r}; use the config it was trained with (config.yaml in its run folder)"
                )
