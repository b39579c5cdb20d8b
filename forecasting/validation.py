"""Refuse a run before it writes anything: every check that needs only the parsed config
(and, after instantiation, the built objects) runs here, called from short hooks in cli.py.

The rule: a run either does what was asked, with the data and weights the user meant, or
stops before Lightning creates the logger, with ONE line (a `ForecastingError`, exit 2)
naming the config key, file or metric and what to do.
"""

import contextlib
import importlib
import logging
import os
import re
import warnings
from pathlib import Path

import torch

from forecasting.errors import ForecastingError

EVAL_SUBCOMMANDS = ("validate", "test", "predict")
# Data settings a checkpoint's stored state overrides (split dates, scaler, features): a config
# that differs would record one thing while the run does another.
CKPT_DATA_KEYS = ("features", "target", "horizon", "val_start", "test_start", "scaler", "scale_per_ticker")
SPLIT_KEYS = ("val_start", "test_start")


# ------------------------------------------------------------------ jsonargparse errors
STRUCTURE = re.compile(
    r"^(- )?(Does not validate against|Subtypes:|Errors:|Given value type:|Expected a <class 'NoneType'>|"
    r"Not a valid subclass of LightningDataModule|Subclass types expected)"
)


def argument_error_line(message: str, subcommand: str | None) -> str:
    """jsonargparse's nested multi-line error -> 'key: what is wrong' plus a --help hint."""
    keys, detail, given = [], None, None
    # A nested parser's error can start mid-line ("... a callable class: Parser key \"num_layers\":").
    message = re.sub(r':\s*Parser key "', ':\nParser key "', str(message))
    for raw in message.splitlines():
        line = raw.strip()
        if not line:
            continue
        key = re.match(r'^(?:- )?(?:error: )?Parser key "([^"]+)":?\s*(.*)$', line)
        if key:
            keys.append(key.group(1))
            detail = key.group(2) or None  # the innermost key's reason is the one that matters
            continue
        if re.match(r"^(- )?Problem with given class_path", line):
            keys.append("init_args")
            continue
        if line.startswith("Given value:"):
            given = given or line[len("Given value:") :].strip()
            continue
        if STRUCTURE.match(line):
            continue
        detail = detail or line.removeprefix("error: ").removeprefix("- ")
    path = ".".join(dict.fromkeys(keys))  # nested parsers repeat a key
    text = (f"{path}: " if path else "") + (detail or (given and f"invalid value {given}") or "invalid arguments")
    if "<unicode string>" in text or "yaml" in text.lower() and "Problem in" not in text:
        text = text.replace('"<unicode string>"', "the config")
    command = f"python -m forecasting {subcommand} --help" if subcommand else "python -m forecasting --help"
    return f"{text} (see {command})"


def check_yaml_files(args: list[str] | None) -> None:
    """A --config file that is not valid YAML: name the file and the line (jsonargparse says "<unicode string>")."""
    import yaml

    args = list(args or [])
    for i, arg in enumerate(args):
        value = args[i + 1] if arg in ("--config", "-c") and i + 1 < len(args) else None
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        if value is None:
            continue
        path = Path(value)
        if not path.is_file():
            raise ForecastingError(f"--config {value}: no such file")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ForecastingError(f"--config {value}: not a UTF-8 text file") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ForecastingError(f"--config {value}:{where}: not valid YAML ({problem}); fix the file") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ForecastingError(
                f"--config {value}: expected a mapping of keys (trainer:, model:, data:), got a {type(loaded).__name__}"
            )


# ------------------------------------------------------------------ checkpoints to use
def run_folder(config) -> Path | None:
    """<save_dir>/<name> of the configured logger, where fit writes version_N folders."""
    logger = config.trainer.get("logger") if config.get("trainer") else None
    init = logger.get("init_args") if hasattr(logger, "get") else None
    if init is None or init.get("save_dir") is None:
        return None
    return Path(init["save_dir"]) / (init.get("name") or "lightning_logs")


def newest_last(config) -> Path | None:
    runs = run_folder(config)
    if runs is None:
        return None
    found = sorted(runs.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def best_of(last: Path) -> Path | None:
    """The best checkpoint the checkpoint callback recorded in a run's last.ckpt."""
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        for key, state in ckpt.get("callbacks", {}).items():
            if "Checkpoint" in str(key) and state.get("best_model_path"):  # ModelCheckpoint or ours
                return Path(state["best_model_path"])
    except Exception:  # an unreadable last.ckpt: check_checkpoint says why when it is used
        return None
    return None


def resolve_ckpt_path(subcommand: str, config) -> None:
    """Turn `last`/`best` into a file, and refuse to validate/test/predict without trained weights."""
    ckpt = config.get("ckpt_path")
    runs = run_folder(config)
    where = f"under {runs}/version_*/checkpoints" if runs else "(no logger save_dir configured)"
    if ckpt is None:
        if subcommand in EVAL_SUBCOMMANDS:
            last = newest_last(config)
            hint = f"e.g. --ckpt_path {last} (or --ckpt_path last)" if last else "train one with fit first"
            raise ForecastingError(
                f"{subcommand} needs trained weights: pass --ckpt_path <checkpoint file>; {hint} "
                "(without it the model's random initial weights would be scored)"
            )
        return
    if ckpt == "last":
        last = newest_last(config)
        if last is None:
            raise ForecastingError(f"--ckpt_path last: no last.ckpt {where}; run fit first or give the checkpoint file")
        config.ckpt_path = str(last)
        if subcommand == "fit":  # resume into the same version folder (cli.resume_last)
            config.trainer.logger.init_args["version"] = last.parent.parent.name
        print(f"{subcommand}: using {last}")
    elif ckpt == "best" and subcommand != "fit":
        last = newest_last(config)
        best = best_of(last) if last else None
        if best is None or not best.is_file():
            raise ForecastingError(
                f"--ckpt_path best: no best checkpoint recorded {where}; give the checkpoint file (a run's "
                "checkpoints/epoch*.ckpt) or --ckpt_path last"
            )
        config.ckpt_path = str(best)
        print(f"{subcommand}: using the best checkpoint {best}")
    elif ckpt in ("hpc", "registry") or (ckpt == "best" and subcommand == "fit"):
        raise ForecastingError(f"--ckpt_path {ckpt} is not supported here; give a checkpoint file or 'last'")


def compare_data(path: str, ckpt: dict, data: dict | None, subcommand: str) -> None:
    """Refuse config data settings that the checkpoint's stored state would silently override."""
    trained = ckpt.get("datamodule_hyper_parameters")
    if not isinstance(trained, dict) or not data:
        return
    for key in CKPT_DATA_KEYS:
        if subcommand == "predict" and key in SPLIT_KEYS:
            continue  # predict scores no split
        if key not in trained or key not in data:
            continue
        if not same_value(trained[key], data[key]):
            raise ForecastingError(
                f"ckpt_path: {path} was trained with data.{key}={trained[key]!r}, but the config has "
                f"{data[key]!r}; {subcommand} would use the checkpoint's value: drop the override, or fit a new model"
            )


def same_value(a, b) -> bool:
    import pandas as pd

    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str) and a != b:
        try:
            return pd.Timestamp(a) == pd.Timestamp(b)
        except (ValueError, TypeError):
            return False
    return a == b


def check_not_done(path: str, ckpt: dict, trainer: dict) -> None:
    """`fit --ckpt_path` on a run that already reached max_epochs/max_steps would do nothing."""
    # "processed": epochs whose training finished (last.ckpt is saved before "completed" counts it).
    done = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed")
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if isinstance(done, int) and isinstance(max_epochs, int) and max_epochs >= 0 and done >= max_epochs:
        raise ForecastingError(
            f"ckpt_path: {path} already trained {done} epochs and trainer.max_epochs is {max_epochs}: "
            f"nothing to resume; raise it, e.g. --trainer.max_epochs {done + 10}"
        )
    step = ckpt.get("global_step")
    if isinstance(step, int) and isinstance(max_steps, int) and max_steps >= 0 and step >= max_steps:
        raise ForecastingError(
            f"ckpt_path: {path} already trained {step} steps and trainer.max_steps is {max_steps}: nothing to resume"
        )


def check_state_shapes(path: str, ckpt_state: dict, model: torch.nn.Module) -> None:
    """The built model must take every tensor of the checkpoint: name the first that does not fit."""
    own = model.state_dict()
    for name, value in ckpt_state.items():
        if name not in own:
            raise ForecastingError(
                f"ckpt_path: {path} holds '{name}', which this model does not have: it was trained with another "
                "model or data config; use the config.yaml of its run folder"
            )
        if isinstance(value, torch.Tensor) and tuple(value.shape) != tuple(own[name].shape):
            raise ForecastingError(
                f"ckpt_path: {path}: '{name}' has shape {tuple(value.shape)} in the checkpoint but "
                f"{tuple(own[name].shape)} with this config (other features, horizon or network size?); "
                "use the config.yaml of its run folder"
            )
    missing = [n for n in own if n not in ckpt_state]
    if missing:
        raise ForecastingError(f"ckpt_path: {path} lacks '{missing[0]}': it was trained with another model config")


# ------------------------------------------------------------------ config keys
@contextlib.contextmanager
def quiet():
    """Silence Lightning's info lines and warnings while building throwaway objects."""
    log = logging.getLogger("lightning.pytorch")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def import_class(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_trainer(trainer: dict) -> None:
    """Build a throwaway Trainer from the trainer.* keys (no logger, callbacks or files) so Lightning's
    own checks (max_epochs, accelerator, devices, precision, ...) fail here, before anything is written."""
    import lightning as L

    kwargs = {k: v for k, v in trainer.items() if k not in ("logger", "callbacks", "plugins")}
    for key in ("strategy", "profiler"):
        if isinstance(kwargs.get(key), dict):
            kwargs.pop(key)
    kwargs.update(logger=False, enable_checkpointing=False, callbacks=None)
    # Integer keys Lightning accepts at Trainer() but fails on later (accumulate_grad_batches 0: a
    # ZeroDivisionError in the first step, after the run folder is written), with their smallest value.
    floors = {"max_epochs": -1, "max_steps": -1, "min_epochs": 0, "min_steps": 0, "log_every_n_steps": 0,
              "check_val_every_n_epoch": 1, "accumulate_grad_batches": 1, "num_sanity_val_steps": -1}  # fmt: skip
    for key, floor in floors.items():
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < floor:
            allowed = {-1: "-1 (no limit) or 0 and more", 0: "0 or more", 1: "1 or more"}[floor]
            if key == "num_sanity_val_steps":
                allowed = "-1 (every validation batch), 0 (no sanity check) or more"
            raise ForecastingError(f"trainer.{key}: {value} is not allowed; use {allowed}")
    try:
        with quiet():
            L.Trainer(**kwargs)
    except Exception as err:  # Lightning's MisconfigurationException, ValueError, TypeError, RuntimeError
        keys = ", ".join(f"trainer.{k}={trainer.get(k)!r}" for k in ("accelerator", "devices", "strategy", "precision"))
        raise ForecastingError(f"trainer: {first_line(err)} (with {keys})") from None


def check_precision(trainer, model, train: bool, configured=None) -> None:
    """On a CPU, lower precisions miss kernels for some layers (an LSTM under 16-mixed, or bf16-mixed
    on a CPU without bfloat16 instructions, fails deep inside oneDNN after the run folder is written).
    So: one step of a copy of the network on a tiny random batch under the run's precision, before
    anything is written. Only when the precision is not 32/64-bit and the run is on a CPU; a network
    that fails in float32 too is left to fail as it would (that is the network's bug, not the setting)."""
    import copy

    from forecasting.models import contract

    precision = str(trainer.precision)
    net, n_features = getattr(model, "net", None), getattr(model, "hparams", {}).get("n_features")
    if precision in ("32-true", "64-true", "32", "64") or trainer.strategy.root_device.type != "cpu":
        return
    if not isinstance(net, torch.nn.Module) or not isinstance(n_features, int):
        return
    x = torch.randn(2, 8, n_features, generator=torch.Generator().manual_seed(0))

    def step(plugin) -> None:
        copied, inputs = copy.deepcopy(net).train(), x
        if plugin is not None:
            copied, inputs = plugin.convert_module(copied), plugin.convert_input(x)
        with plugin.forward_context() if plugin is not None else contextlib.nullcontext():
            out, _ = contract.call(copied, inputs)
        if train:
            out.float().sum().backward()

    with torch.random.fork_rng(devices=[]):  # dropout in the copy must not move the run's random numbers
        try:
            step(trainer.precision_plugin)
        except Exception as err:  # noqa: BLE001  any kernel error; re-checked in float32 below
            try:
                step(None)
            except Exception:  # noqa: BLE001
                return  # fails in float32 as well: not the precision's doing
            given = precision if configured in (None, precision) else f"{configured} (on a CPU: {precision})"
            reason = first_line(err).split(". ")[0]  # oneDNN's first sentence says it; the rest is how to debug
            raise ForecastingError(
                f"trainer.precision: {given} does not run this network on this CPU ({type(err).__name__}: "
                f"{reason}); use 32-true, or run on a GPU"
            ) from None


def check_writable_dir(key: str, value) -> None:
    if value is None:
        return
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ForecastingError(f"{key}: {value} is a file, not a folder; give a folder path")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ForecastingError(f"{key}: {value} cannot be created ({parent} is a file)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ForecastingError(f"{key}: {value} is not writable ({parent}); choose another folder")


def check_output_file(key: str, value) -> None:
    if value is None:
        return
    path = Path(value)
    if path.is_dir() or str(value).endswith(("/", os.sep)):
        raise ForecastingError(f"{key}: {value} is a folder; give a file name such as {path / 'predictions.csv'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ForecastingError(f"{key}: {value} is not writable; choose another file")
    check_writable_dir(f"{key} (its folder)", path.parent)


def check_optimizer(model: dict) -> None:
    """Build the configured optimiser (and scheduler) on a dummy parameter: torch's own checks
    (negative lr, weight decay, betas, ...) then fail here, not after the logger started."""
    optimizer = model.get("optimizer")
    if not isinstance(optimizer, dict) or "class_path" not in optimizer:
        return
    param = torch.nn.Parameter(torch.zeros(1))
    init = dict(optimizer.get("init_args") or {})
    for key in ("lr", "weight_decay", "momentum", "eps"):
        value = init.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ForecastingError(f"model.optimizer.init_args.{key}: {value} is negative; use a value >= 0")
    try:
        with quiet():
            opt = import_class(optimizer["class_path"])([param], **init)
    except Exception as err:
        raise ForecastingError(f"model.optimizer ({optimizer['class_path']}): {first_line(err)}") from None
    scheduler = model.get("lr_scheduler")
    if isinstance(scheduler, dict) and "class_path" in scheduler:
        try:
            with quiet():
                import_class(scheduler["class_path"])(opt, **dict(scheduler.get("init_args") or {}))
        except Exception as err:
            raise ForecastingError(f"model.lr_scheduler ({scheduler['class_path']}): {first_line(err)}") from None


def check_model_vs_data(model: dict, data: dict) -> None:
    window, burn_in = data.get("window"), model.get("burn_in")
    dense = model.get("dense_loss") or model.get("tbptt_steps") is not None
    if dense and isinstance(window, int) and isinstance(burn_in, int) and burn_in >= window:
        raise ForecastingError(
            f"model.burn_in ({burn_in}) must be smaller than data.window ({window}) with a dense loss: "
            "no step of a window would be scored"
        )
    workers = data.get("num_workers")
    if isinstance(workers, int) and workers < 0:
        raise ForecastingError(f"data.num_workers: {workers} is negative; use 0 (load in the main process) or more")


def check_config(subcommand: str | None, config) -> None:
    """Every check that needs only the parsed config; runs before any class is built."""
    plain = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    trainer, model = plain.get("trainer") or {}, plain.get("model") or {}
    data = (plain.get("data") or {}).get("init_args") or {}
    check_trainer(trainer)
    logger = trainer.get("logger")
    for item in logger if isinstance(logger, list) else [logger]:
        if isinstance(item, dict):
            check_writable_dir("trainer.logger save_dir", (item.get("init_args") or {}).get("save_dir"))
    check_writable_dir("trainer.default_root_dir", trainer.get("default_root_dir"))
    if (plain.get("checkpoint") or {}).get("dirpath"):
        check_writable_dir("checkpoint.dirpath", plain["checkpoint"]["dirpath"])
    if subcommand == "predict":
        check_output_file("prediction_writer.output", (plain.get("prediction_writer") or {}).get("output"))
    check_optimizer(model)
    check_model_vs_data(model, data)


def check_monitors(config, model) -> None:
    """A monitor naming a metric the model never logs would only fail (or silently never
    trigger) after training: check the names before it starts."""
    names = getattr(model, "metric_names", None)
    if not callable(names):
        return
    known = set(names())
    plain = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    keys = {
        "checkpoint.monitor": (plain.get("checkpoint") or {}).get("monitor"),
        "early_stopping.monitor": (plain.get("early_stopping") or {}).get("monitor"),
    }
    if (plain.get("model") or {}).get("lr_scheduler"):
        keys["model.scheduler_monitor"] = (plain.get("model") or {}).get("scheduler_monitor")
    for key, value in keys.items():
        if value is not None and value not in known and not value.startswith("lr-"):  # lr-*: LearningRateMonitor
            import difflib

            near = difflib.get_close_matches(value, sorted(known), n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"logged: {sorted(known)}"
            raise ForecastingError(f"{key}: '{value}' is never logged by this model; {hint}")
