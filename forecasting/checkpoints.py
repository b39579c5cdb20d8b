"""Checkpoints that are never half-written, and never loaded blindly.

- `AtomicCheckpointIO` writes each checkpoint to a temporary file beside it and
  renames it into place, so a run killed while saving leaves the previous
  `last.ckpt` intact (Lightning's own writer truncates the file first).
- `Checkpoints` (the `checkpoint` key) is Lightning's ModelCheckpoint with a `last.ckpt` that
  is always the latest state and never serialised twice: see its docstring.
- `check_checkpoint` opens a checkpoint with `torch.load(weights_only=True)`
  before a run uses it: a file whose pickle could run code is refused, and a
  checkpoint trained with other features, target, horizon or network shape is
  reported in one line instead of a size-mismatch traceback.
"""

import hashlib
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from forecasting.errors import ForecastingError

# Keys whose value must match between a checkpoint and the config that loads it; `net` is the
# whole network config (class_path and every init arg), whatever the network.
DATA_KEYS = ("features", "target", "horizon")
MODEL_KEYS = ("n_features", "horizon", "net", "head", "quantiles")  # head: what the outputs mean
# Stored in every checkpoint this template writes: a SHA-256 over its tensors, so flipped bytes
# are reported as corruption instead of loading and failing later as NaN losses.
CHECKSUM_KEY = "forecasting_checksum"


def tensors_in(value, prefix=""):
    """(name, tensor) pairs of every tensor in nested dicts/lists, in a fixed order."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from tensors_in(value[key], f"{prefix}/{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from tensors_in(item, f"{prefix}/{i}")


def checksum(checkpoint: dict) -> str:
    digest = hashlib.sha256()
    for name, tensor in tensors_in({k: checkpoint.get(k) for k in ("state_dict", "optimizer_states")}):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(".*.ckpt.*.tmp"):  # left by a run killed while saving
            stale.unlink(missing_ok=True)
        if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
            checkpoint[CHECKSUM_KEY] = checksum(checkpoint)
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


class Checkpoints(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` is the state after the latest validation (or epoch), which
    `fit --ckpt_path last` resumes from, at the cost of one serialisation per save point.

    Lightning 2.6 writes last.ckpt only at a step where it also wrote a top-k file, so after the
    best epoch it stops moving and a resume silently repeats every epoch since; when it does write
    both, it serialises the same state twice. Here last.ckpt is written at every save point, and
    when a top-k file was written at the same step it becomes a hard link to that file (linked
    under a temporary name and renamed over, so a kill never leaves a half-written last.ckpt). A
    later save replaces last.ckpt with a new file; the top-k file keeps its own contents.
    (Private Lightning attributes used: `_last_global_step_saved`, `_last_checkpoint_saved`;
    tests/test_checkpoints.py pins the behaviour.)"""

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning 2.6 writes last.ckpt when training ends even under fast_dev_run, whose logger is
        # a dummy: into <cwd>/checkpoints. A smoke test writes nothing.
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)

    def _save_last_if_behind(self, trainer) -> None:
        # Skipped when something was saved at this step already (then last.ckpt was too).
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _last_path(self, trainer, monitor_candidates) -> str:
        path = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        version = self.STARTING_VERSION  # last-v1.ckpt beside another run's last.ckpt, as Lightning names it
        while self._enable_version_counter and self.file_exists(path, trainer) and path != self.last_model_path:
            path = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST, ver=version)
            version += 1
        return path

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        # last.ckpt is written at this step whatever happens: record its path before a top-k file is
        # written, so that file's state (which last.ckpt may become) already names it.
        if self.save_last is True:
            self.last_model_path = self._last_path(trainer, monitor_candidates)
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        just_saved = self._last_checkpoint_saved if self._last_global_step_saved == trainer.global_step else None
        if self.save_last is not True or not just_saved:
            return super()._save_last_checkpoint(trainer, monitor_candidates)
        path = self._last_path(trainer, monitor_candidates)
        previous, self.last_model_path = self.last_model_path, path
        if trainer.is_global_zero:
            tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.link.tmp")
            tmp.unlink(missing_ok=True)
            try:
                os.link(just_saved, tmp)
            except OSError:  # no hard links on this filesystem: copy the bytes (still no second serialisation)
                shutil.copyfile(just_saved, tmp)
            os.replace(tmp, path)
        trainer.strategy.barrier()
        if previous and self._should_remove_checkpoint(trainer, previous, path):
            self._remove_checkpoint(trainer, previous)


def flatten(tree: dict, prefix: str = ""):
    """('init_args.hidden_sizes', [64, 32]) pairs of a nested dict."""
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def check_checkpoint(path: str, data: dict | None, model: dict | None) -> dict:
    """Refuse an unsafe, malformed or corrupted checkpoint, or one that does not fit the
    config's data and model keys; return it (loaded with weights_only=True) for further checks."""
    if Path(path).is_dir():
        raise ForecastingError(f"ckpt_path: {path} is a folder; give a checkpoint file such as {path}/last.ckpt")
    if not Path(path).is_file():
        raise ForecastingError(f"ckpt_path: no checkpoint file at {path}")
    if Path(path).stat().st_size == 0:
        raise ForecastingError(
            f"ckpt_path: {path} is empty (0 bytes): a run killed while saving? use another checkpoint"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err) and "global" not in str(err):  # a byte the unpickler rejects, not a class
            raise ForecastingError(
                f"ckpt_path: {path} is not a checkpoint file (corrupted or another format)"
            ) from None
        raise ForecastingError(
            f"ckpt_path: {path} refused: it holds pickled objects that could run code when loaded "
            "(torch.load weights_only=True); only use checkpoints this template wrote, or ones you trust"
        ) from None
    except Exception as err:  # zip, pickle or storage errors: truncated, corrupted or not a torch file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ForecastingError(
            f"ckpt_path: {path} is not a readable checkpoint, corrupted or another format ({first[:120]})"
        ) from None
    if not isinstance(ckpt, dict):
        raise ForecastingError(
            f"ckpt_path: {path} holds a {type(ckpt).__name__}, not a Lightning checkpoint (a dict with "
            "'state_dict'); give a file this template's fit wrote (<run>/checkpoints/*.ckpt)"
        )
    if not isinstance(ckpt.get("state_dict"), dict):
        raise ForecastingError(
            f"ckpt_path: {path} has no 'state_dict' (keys: {sorted(map(str, ckpt))[:6]}): not a Lightning "
            "checkpoint; a bare model.state_dict() cannot be used here"
        )
    stored = ckpt.get(CHECKSUM_KEY)
    if stored is not None and stored != checksum(ckpt):
        raise ForecastingError(
            f"ckpt_path: {path} is corrupted: its tensors do not match the checksum stored when it was saved; "
            "use another checkpoint (e.g. an epoch*.ckpt of the same run)"
        )
    for name, tensor in tensors_in(ckpt["state_dict"]):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ForecastingError(
                f"ckpt_path: {path}: weight '{name.lstrip('/')}' holds NaN or Inf; use an earlier checkpoint"
            )

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
    return ckpt
