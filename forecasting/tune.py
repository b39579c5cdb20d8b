"""`python -m forecasting tune`: an Optuna search over config keys that says why trials failed.

    python -m forecasting tune --config configs/volatility.yaml \\
        --tune.space configs/volatility_space.yaml --tune.trials 40

The space file maps the dotted keys a user already passes on the command line to a range:

    model.optimizer.init_args.lr: {float: [1.0e-4, 1.0e-2], log: true}
    model.hidden_size: {int: [16, 128], log: true}
    model.gradient_clip_val: {choice: [null, 1.0]}

Every trial is a normal `fit` of the base config plus the sampled values as command-line
overrides, run in this process (no state is carried between trials: each one builds a fresh
CLI, seeds, model, data module and trainer; tests/test_tune.py checks that a repeated trial
gives the same loss), with its own TensorBoard folder and checkpoint under
<save_dir>/<name>/tune/<study>/trial_NNN. Its best validation metric is the objective; the
diagnostics (skill against the baselines, clip fraction, gradient flow, gate saturation, copy
detectors) and a failure cause become the trial's user attributes. The test split is never
looked at by a trial: the best trial's checkpoint is scored on test once, at the end.

The study lives in an SQLite file next to the trials unless --tune.storage names another
Optuna storage; re-running the same command continues it up to --tune.trials finished trials,
and several processes given the same storage share the work (docs/tune.md).
"""

import argparse
import gc
import json
import math
import os
import re
import socket
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import yaml
from lightning.pytorch import Callback

from forecasting.cli import ForecastingCLI, build
from forecasting.errors import ForecastingError, OneLineParser

# Diagnostics read back from each trial's TensorBoard file (the callbacks log them straight to the
# logger, so they are not in trainer.callback_metrics): tag -> how to reduce the logged series.
EVENT_TAGS = {
    "grad_norm/clip_fraction": "mean",  # share of steps clipped, over the whole run
    "grad_flow/first_to_last": "last",  # gradient reaching the first step / the last, at the end
    "gates/forget_saturated": "last",
    "gates/input_saturated": "last",
}
COPY_LAG, COPY_CORR, FLAT_RATIO = 1, 0.95, 0.1  # the copy and flatness detectors' thresholds
CAUSE_KINDS = ("non-finite", "pruned", "copies yesterday", "flat forecast", "error", "no result")


# ---------------------------------------------------------------------------- the space file
@dataclass
class Param:
    key: str  # dotted config key, e.g. model.optimizer.init_args.lr
    kind: str  # float | int | choice
    values: list  # [low, high] or the choices
    log: bool = False
    step: float | int | None = None
    encoded: bool = field(default=False)  # choices that Optuna cannot store (lists, dicts) go as JSON

    def suggest(self, trial):
        if self.kind == "float":
            return trial.suggest_float(self.key, *self.values, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, *self.values, log=self.log, step=self.step or 1)
        value = trial.suggest_categorical(self.key, self.stored_choices())
        return json.loads(value) if self.encoded else value

    def stored_choices(self) -> list:
        return [json.dumps(v) for v in self.values] if self.encoded else list(self.values)

    def samples(self) -> list:
        """Values to try through the parser before any trial runs."""
        return list(self.values)

    def contains(self, value) -> bool:
        if self.kind == "choice":
            return value in self.values
        return isinstance(value, int | float) and self.values[0] <= value <= self.values[1]

    def stored(self, value):
        """The value as Optuna stores it (enqueue_trial takes this form)."""
        return json.dumps(value) if self.encoded else value

    def decode(self, stored):
        return json.loads(stored) if self.encoded and stored is not None else stored


def read_space(path: str) -> list[Param]:
    """The search space from YAML; every mistake in it is one line naming the file and key."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ForecastingError(f"--tune.space {path}: no such file") from None
    except yaml.YAMLError as err:
        raise ForecastingError(f"--tune.space {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not raw:
        raise ForecastingError(
            f"{path}: expected a mapping of config keys to ranges, e.g. model.hidden_size: {{int: [16, 128]}}"
        )
    params = []
    for key, spec in raw.items():
        kinds = [k for k in ("float", "int", "choice") if isinstance(spec, dict) and k in spec]
        extra = set(spec) - {"float", "int", "choice", "log", "step"} if isinstance(spec, dict) else set()
        if len(kinds) != 1 or extra:
            raise ForecastingError(
                f"{path}: {key}: expected one of {{float: [low, high]}}, {{int: [low, high]}}, {{choice: [a, b, ...]}} "
                f"(optionally log: true, step: x), got {spec!r}"
            )
        kind, values = kinds[0], spec[kinds[0]]
        if not isinstance(values, list) or not values:
            raise ForecastingError(f"{path}: {key}: {kind} takes a list, got {values!r}")
        if kind != "choice":
            ok = len(values) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            if not ok or values[0] >= values[1] or (spec.get("log") and values[0] <= 0):
                raise ForecastingError(
                    f"{path}: {key}: {kind} takes [low, high] with low < high (low > 0 with log: true), got {values}"
                )
            if kind == "int" and not all(isinstance(v, int) for v in values):
                raise ForecastingError(f"{path}: {key}: int takes integer bounds, got {values}")
        encoded = kind == "choice" and not all(v is None or isinstance(v, bool | int | float | str) for v in values)
        params.append(Param(str(key), kind, values, bool(spec.get("log", False)), spec.get("step"), encoded))
    return params


def as_arg(value) -> str:
    """A value as the command line takes it (null, true, 0.001, [64, 32], gru)."""
    return value if isinstance(value, str) else json.dumps(value)


def overrides(params: dict) -> list[str]:
    return [arg for key, value in params.items() for arg in (f"--{key}", as_arg(value))]


# ---------------------------------------------------------------------------- parsing without running
class _Parsed(Exception):
    def __init__(self, cli):
        self.cli = cli


class _ParseOnlyCLI(ForecastingCLI):
    """Builds the parser `fit` uses and stops: nothing is instantiated, nothing written."""

    def parse_arguments(self, parser, args):
        raise _Parsed(self)


def fit_parser():
    try:
        build([], run=False, cli_class=_ParseOnlyCLI, parser_kwargs={"exit_on_error": False})
    except _Parsed as parsed:
        return parsed.cli.parser
    raise AssertionError("unreachable")


def parse(parser, args: list[str], what: str):
    """Parse `fit` arguments; a refusal is one ForecastingError line."""
    try:
        return parser.parse_args(args)
    except (Exception, SystemExit) as err:
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        if "unrecognized arguments" in message or "is not accepted" in message or "No action for key" in message:
            raise ForecastingError(
                f"{what} is not a config key of this config (the keys are those of "
                f"`python -m forecasting fit ... --print_config`)"
            ) from None
        raise ForecastingError(f"{what} is refused by the config parser: {message[:300]}") from None


def validate_space(parser, fit_args: list[str], params: list[Param], space_path: str):
    """Parse the base config alone, then with every space key at each of its sample values:
    a misspelt key or impossible value stops the search before any trial starts."""
    config = parse(parser, fit_args, "the base config")
    for param in params:
        for value in param.samples():
            parse(
                parser,
                fit_args + [f"--{param.key}", as_arg(value)],
                f"{space_path}: {param.key} (value {as_arg(value)})",
            )
    return config


def plain(value):
    """A parsed config value as plain data (jsonargparse gives Namespaces)."""
    return value.as_dict() if hasattr(value, "as_dict") else value


# ---------------------------------------------------------------------------- one trial
class TrialRecorder(Callback):
    """Reports the objective to Optuna after each validation, stops a trial the pruner gives up
    on, and keeps the validation metrics of the best validation so far."""

    def __init__(self, trial, metric: str, maximize: bool, prune: bool):
        self.trial, self.metric, self.maximize, self.prune = trial, metric, maximize, prune
        self.best: float | None = None
        self.at_best: dict[str, float] = {}
        self.pruned_at: int | None = None
        self.nonfinite_at: int | None = None
        self.validations = 0

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        if not math.isfinite(value):  # no NonFiniteGuard in the config: a NaN loss ends the trial here
            self.nonfinite_at, trainer.should_stop = trainer.global_step, True
            return
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best = value
            self.at_best = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1
            }
        # Step = how many validations so far: comparable across trials whose windows (so batches
        # per epoch) differ, which the pruner needs (it compares trials at the same step).
        self.validations += 1
        self.trial.report(value, self.validations)
        if self.prune and self.trial.should_prune():
            self.pruned_at, trainer.should_stop = trainer.global_step, True


class _TrialCLI(ForecastingCLI):
    """ForecastingCLI plus the recorder; parses its explicit args without LightningCLI's warning
    about sys.argv (which holds the `tune` command line here)."""

    def __init__(self, *args, extra_callbacks=(), **kwargs):
        self.extra_callbacks = list(extra_callbacks)
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser, args):
        self.config = parser.parse_args(args)

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.extend(self.extra_callbacks)
        return trainer


def read_events(log_dir: str) -> dict[str, float]:
    """The EVENT_TAGS diagnostics from a run's TensorBoard files (empty where not logged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not log_dir or not Path(log_dir).is_dir():
        return {}
    events = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    events.Reload()
    found = {}
    for tag, how in EVENT_TAGS.items():
        if tag in events.Tags()["scalars"]:
            values = [e.value for e in events.Scalars(tag)]
            found[tag] = sum(values) / len(values) if how == "mean" else values[-1]
    return found


def diagnose_completed(metrics: dict[str, float]) -> str | None:
    """Failure cause of a trial that trained to the end: copying the last value, or a flat forecast."""
    if metrics.get("val/best_lag") == COPY_LAG and metrics.get("val/corr_with_last_input", 0) > COPY_CORR:
        return "copies yesterday"
    if metrics.get("val/pred_std_ratio", 1.0) < FLAT_RATIO:
        return "flat forecast"
    return None


def cause_kind(cause: str | None) -> str | None:
    return None if cause is None else next((k for k in CAUSE_KINDS if cause.startswith(k)), "error")


@dataclass
class Search:
    parser: object
    fit_args: list[str]  # the user's configs and overrides, without the tune options
    params: list[Param]
    study_dir: Path
    log_name: str  # the logger name the trials use: <name>/tune/<study>
    metric: str
    maximize: bool
    prune: bool
    extra: list[str]  # overrides every trial needs (devices, checkpoint monitor)

    def objective(self, trial) -> tuple[float | None, str | None]:
        """One `fit`; returns its best metric and its failure cause (None: none)."""
        params = {p.key: p.suggest(trial) for p in self.params}
        version = f"trial_{trial.number:03d}"
        args = self.fit_args + self.extra + overrides(params)
        args += ["--trainer.logger.init_args.name", self.log_name, "--trainer.logger.init_args.version", version]
        recorder = TrialRecorder(trial, self.metric, self.maximize, self.prune)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("log_dir", str(self.study_dir / version))
        cause, cli = None, None
        try:
            cli = build(["fit", *args], cli_class=partial(_TrialCLI, extra_callbacks=[recorder]))
        except ForecastingError as err:
            stopped = re.match(r"training stopped at global_step (\d+)", str(err))  # NonFiniteGuard's message
            cause = f"non-finite at step {stopped[1]}" if stopped else f"error: {str(err)[:200]}"
            trial.set_user_attr("error", str(err))
        except SystemExit:  # Lightning's answer to Ctrl-C (after a graceful shutdown): stop the search
            raise
        except Exception as err:  # a bug or a resource limit: the search goes on
            cause = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
        if cli is not None:
            checkpoint = cli.trainer.checkpoint_callback
            if checkpoint is not None and checkpoint.best_model_path:
                trial.set_user_attr("checkpoint", checkpoint.best_model_path)
            trial.set_user_attr("global_step", int(cli.trainer.global_step))
        del cli
        gc.collect()  # the model, data and trainer of this trial go before the next one is built
        for key, value in {**recorder.at_best, **read_events(str(self.study_dir / version))}.items():
            trial.set_user_attr(key, value)
        if cause is not None:
            pass  # the exception says most: a diverged or broken run
        elif recorder.nonfinite_at is not None:
            cause = f"non-finite {self.metric} at step {recorder.nonfinite_at}"
        elif recorder.pruned_at is not None:
            cause = f"pruned at step {recorder.pruned_at}"
        elif recorder.best is None:
            cause = f"no result: {self.metric} was never logged (is there a validation split?)"
        else:
            cause = diagnose_completed(recorder.at_best)
        if cause is not None:
            trial.set_user_attr("failure", cause)
        print(f"tune: trial {trial.number}: {self.metric} {recorder.best if recorder.best is not None else 'n/a'}"
              f"{'' if cause is None else '  [' + cause + ']'}  {params}", flush=True)  # fmt: skip
        return recorder.best, cause

    def run(self, study, trials: int, finished_states) -> None:
        """Ask for trials until the study has `trials` finished ones (other workers count too)."""
        import optuna

        State = optuna.trial.TrialState
        while len(study.get_trials(deepcopy=False, states=finished_states)) < trials:
            trial = study.ask()
            try:
                value, cause = self.objective(trial)
            except BaseException:  # Ctrl-C: the trial is marked failed, not left running in the storage
                study.tell(trial, state=State.FAIL)
                raise
            if cause_kind(cause) in ("non-finite", "pruned"):
                study.tell(trial, state=State.PRUNED)  # the sampler learns to avoid the region (it ignores FAIL)
            elif cause_kind(cause) in ("error", "no result"):
                study.tell(trial, state=State.FAIL)
            else:
                study.tell(trial, value)


# ---------------------------------------------------------------------------- the end of a search
def short_names(keys: list[str]) -> dict[str, str]:
    """model.optimizer.init_args.lr -> lr, unless two keys end alike."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "null" if value is None else str(value)


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def in_common(failed: list[dict], others: list[dict], params: list[Param], names: dict[str, str]) -> list[str]:
    """What separates the failed trials' values from the other completed trials', hyperparameter by hyperparameter."""
    found = []
    for p in params:
        bad = [t[p.key] for t in failed if p.key in t]
        good = [t[p.key] for t in others if p.key in t]
        if not bad or not good or len(bad) < len(failed):
            continue
        name = names[p.key]
        if p.kind == "choice":
            if len({json.dumps(v) for v in bad}) == 1 and not all(v == bad[0] for v in good):
                found.append(f"{name} = {fmt(bad[0])} ({sum(v == bad[0] for v in good)} of {len(good)} others had)")
        elif min(bad) > max(good):
            found.append(f"{name} >= {fmt(min(bad))} (others <= {fmt(max(good))})")
        elif max(bad) < min(good):
            found.append(f"{name} <= {fmt(max(bad))} (others >= {fmt(min(good))})")
    return found


def why_failed(trials, params: list[Param]) -> str:
    """Counts per failure cause, and for each cause what its trials had in common against the
    other completed trials (those that trained to the end without that cause)."""
    names = short_names([p.key for p in params])
    decoded = {t.number: {p.key: p.decode(t.params[p.key]) for p in params if p.key in t.params} for t in trials}

    def kind(t):
        return cause_kind(t.user_attrs.get("failure")) or ("no result" if t.state.name == "FAIL" else None)

    groups: dict[str, list] = {}
    for t in trials:
        groups.setdefault(kind(t), []).append(t)
    clean = len(groups.pop(None, []))
    lines = [f"why trials failed ({len(trials)} finished, {clean} without a failure cause):"]
    if not groups:
        lines.append("  no trial failed")
    for k in sorted(groups, key=lambda k: -len(groups[k])):
        group = groups[k]
        others = [decoded[t.number] for t in trials if t.state.name == "COMPLETE" and kind(t) != k]
        common = in_common([decoded[t.number] for t in group], others, params, names)
        if common:
            who = "all had " + " and ".join(common)
        elif others:
            who = "no single hyperparameter separates them from the other completed trials"
        else:
            who = "no other completed trial to compare them with"
        example = group[0].user_attrs.get("failure", "killed or crashed (no result recorded)")
        lines.append(f"  {len(group)} {k}: {who}")
        lines.append(f"     trials {', '.join(str(t.number) for t in group)}; e.g. trial {group[0].number}: {example}")
    return "\n".join(lines)


def top_table(study, params: list[Param], metric: str, n: int) -> str:
    import optuna

    names = short_names([p.key for p in params])
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    done.sort(key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    extra = [
        k
        for k in ("val/skill_vs_naive", "val/skill_vs_har", "grad_norm/clip_fraction")
        if any(k in t.user_attrs for t in done)
    ]
    header = ["trial", metric, *[names[p.key] for p in params], *[k.split("/")[-1] for k in extra], "note"]
    rows = [
        [t.number, t.value, *[p.decode(t.params.get(p.key)) for p in params],
         *[t.user_attrs.get(k, "") for k in extra], t.user_attrs.get("failure", "")]
        for t in done[:n]
    ]  # fmt: skip
    return f"top {len(rows)} of {len(done)} completed trials:\n" + table(rows, header)


def importances(study, study_dir: Path) -> str:
    """Optuna's importance of each hyperparameter (its default evaluator, fANOVA) and two figures."""
    import matplotlib.pyplot as plt
    import optuna
    from optuna.exceptions import ExperimentalWarning

    lines = []
    try:
        values = optuna.importance.get_param_importances(study)
        lines.append("importance (Optuna fANOVA, share of the objective's variance explained):")
        lines += [f"  {key}: {value:.2f}" for key, value in values.items()]
    except (ValueError, RuntimeError) as err:  # too few completed trials, or a single value sampled
        lines.append(f"importance: n/a ({str(err).splitlines()[0]})")
        values = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # optuna.visualization.matplotlib is "experimental"
        plots = {"history.png": optuna.visualization.matplotlib.plot_optimization_history}
        if values:
            plots["importances.png"] = optuna.visualization.matplotlib.plot_param_importances
        for name, plot in plots.items():
            try:
                axes = plot(study)
                axes.figure.tight_layout()
                axes.figure.savefig(study_dir / name, dpi=100)
                plt.close(axes.figure)
                lines.append(f"figure: {study_dir / name}")
            except (ValueError, RuntimeError) as err:
                lines.append(f"figure {name}: n/a ({str(err).splitlines()[0]})")
    return "\n".join(lines)


def write_best(search: Search, best, path: Path) -> None:
    """The best trial's full config, as `fit --config` takes it (logged where the base config logs)."""
    params = {p.key: p.decode(best.params[p.key]) for p in search.params}
    config = parse(search.parser, search.fit_args + overrides(params), "the best trial's config")
    text = search.parser.dump(config, skip_none=False)
    header = (
        f"# Best trial {best.number} of a `python -m forecasting tune` search: {search.metric} {best.value:.6g}.\n"
        f"#   python -m forecasting fit --config {path}\n"
    )
    path.write_text(header + text)


def score_on_test(search: Search, study, best) -> str:
    """`test` with the best trial's best checkpoint: once per best trial (the score is kept in the study)."""
    done = study.user_attrs.get("test", {})
    if done.get("trial") == best.number:
        return (
            f"TEST (scored once, when trial {best.number} became the best; never used to choose; "
            f"stored in the study, not scored again): {test_line(done['metrics'])}"
        )
    checkpoint = best.user_attrs.get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        return f"TEST: not scored (trial {best.number} left no checkpoint)"
    params = {p.key: p.decode(best.params[p.key]) for p in search.params}
    version = f"test_trial_{best.number:03d}"
    args = search.fit_args + search.extra + overrides(params) + ["--ckpt_path", checkpoint]
    args += ["--trainer.logger.init_args.name", search.log_name, "--trainer.logger.init_args.version", version]
    cli = build(["test", *args], cli_class=_TrialCLI)
    metrics = {
        k: round(float(v), 6)
        for k, v in cli.trainer.callback_metrics.items()
        if k.startswith("test/") and v.numel() == 1
    }
    looks = done.get("looks", 0) + 1
    study.set_user_attr("test", {"trial": best.number, "metrics": metrics, "looks": looks})
    note = "" if looks == 1 else f" (the test split has now been scored {looks} times, once per new best trial)"
    return (
        f"TEST (scored once, after the search; never used to choose): trial {best.number}: {test_line(metrics)}{note}"
    )


def test_line(metrics: dict[str, float]) -> str:
    """The test loss and the model's metrics and skills (the baselines' own errors are in TensorBoard)."""
    shown = {k: v for k, v in metrics.items() if "baseline" not in k and not k.endswith(("mae", "rmse"))}
    return ", ".join(f"{k} {v:.4g}" for k, v in shown.items())


# ---------------------------------------------------------------------------- the command
def arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = OneLineParser(
        prog="python -m forecasting tune",
        description="Optuna search over config keys; other arguments (--config, overrides) are those of `fit`.",
    )
    parser.add_argument("--tune.space", dest="space", required=True, help="YAML: dotted config key -> range")
    parser.add_argument(
        "--tune.trials", dest="trials", type=int, default=20, help="finished trials the study should have"
    )
    parser.add_argument(
        "--tune.storage", dest="storage", help="Optuna storage URL (default: sqlite file next to the trials)"
    )
    parser.add_argument("--tune.study", dest="study", help="study name (default: the logger's name)")
    parser.add_argument("--tune.metric", dest="metric", default="val/loss", help="validation metric to optimise")
    parser.add_argument("--tune.direction", dest="direction", choices=["auto", "minimize", "maximize"], default="auto",
                        help="auto: maximize skill_* and hit_rate metrics, minimize the rest")  # fmt: skip
    parser.add_argument("--tune.pruner", dest="pruner", choices=["median", "none"], default="median")
    parser.add_argument("--tune.seed", dest="seed", type=int, help="sampler seed (give each worker its own)")
    parser.add_argument("--tune.test", dest="test", choices=["true", "false"], default="true",
                        help="score the best trial on the test split once at the end")  # fmt: skip
    parser.add_argument("--tune.top", dest="top", type=int, default=10, help="rows of the top-trials table")
    options, fit_args = parser.parse_known_args(argv)
    unknown = [a for a in fit_args if a.startswith("--tune.")]
    if unknown:
        raise ForecastingError(f"unknown tune option {unknown[0]}; see python -m forecasting tune --help")
    if options.trials < 1:
        raise ForecastingError(f"--tune.trials must be at least 1, got {options.trials}")
    if any(a == "--ckpt_path" or a.startswith("--ckpt_path=") for a in fit_args):
        raise ForecastingError("--ckpt_path: every trial trains from scratch; tune takes no checkpoint")
    return options, fit_args


def setup(options, fit_args: list[str]) -> tuple[Search, object]:
    """Everything that can be refused, refused before the study is opened or a trial runs."""
    params = read_space(options.space)
    parser = fit_parser()
    config = validate_space(parser, fit_args, params, options.space)
    logger = plain(config.trainer.get("logger"))
    if not (isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("TensorBoardLogger")):
        raise ForecastingError(
            "trainer.logger: tune needs a TensorBoardLogger (each trial's diagnostics are read from it)"
        )
    init = logger.get("init_args") or {}
    name = init.get("name") or "lightning_logs"
    study = options.study or name.replace("/", "_")
    log_name = f"{name}/tune/{study}"
    study_dir = Path(init.get("save_dir") or ".") / log_name
    extra = []
    devices, strategy = plain(config.trainer.get("devices")), plain(config.trainer.get("strategy"))
    if devices not in ("auto", 1, "1", None) or "ddp" in str(strategy):
        raise ForecastingError(
            f"trainer.devices {devices} / trainer.strategy {strategy}: a trial runs on one device; to use several, "
            "start one tune process per device on the same --tune.storage (docs/tune.md)"
        )
    if devices != 1:
        extra += ["--trainer.devices", "1"]  # "auto" would take every GPU and start DDP inside the search
    maximize = options.direction == "maximize" or (
        options.direction == "auto" and ("skill" in options.metric or "hit_rate" in options.metric)
    )
    if plain(config.get("checkpoint", {})).get("monitor") != options.metric:  # the checkpoint scored on test
        extra += ["--checkpoint.monitor", options.metric, "--checkpoint.mode", "max" if maximize else "min"]
    search = Search(
        parser, fit_args, params, study_dir, log_name, options.metric, maximize, options.pruner == "median", extra
    )
    return search, config


def base_point(search: Search, config) -> tuple[dict, list[str]]:
    """The base config's own values of the space keys that lie inside the space (the first trial
    shows where the search started), and the keys whose values do not."""
    point, outside = {}, []
    for p in search.params:
        value = plain(config.get(p.key))
        if p.contains(value):
            point[p.key] = p.stored(value)
        else:
            outside.append(f"{p.key}={as_arg(value)}")
    return point, outside


def tune(argv: list[str]) -> "object":
    """Run or continue a study; print and write the summary. Returns the Optuna study."""
    try:
        import optuna
    except ImportError:
        raise ForecastingError("tune needs Optuna: pip install -e '.[tune]' (or pip install optuna)") from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
    options, fit_args = arguments(argv)
    search, config = setup(options, fit_args)
    search.study_dir.mkdir(parents=True, exist_ok=True)
    storage = options.storage or f"sqlite:///{search.study_dir / 'study.db'}"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5) if search.prune else optuna.pruners.NopPruner()
    study = optuna.create_study(
        storage=storage,
        study_name=options.study or search.log_name.rsplit("/", 1)[-1],
        direction="maximize" if search.maximize else "minimize",
        pruner=pruner,
        load_if_exists=True,
    )
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    finished = len(study.get_trials(deepcopy=False, states=finished_states))
    # Seeded per continuation: a resumed study must not replay the same random points.
    study.sampler = optuna.samplers.TPESampler(seed=None if options.seed is None else options.seed + finished)
    start, outside = base_point(search, config)
    if start:
        study.enqueue_trial(start, user_attrs={"start": True}, skip_if_exists=True)
        if outside:
            print(
                f"tune: the base config's {', '.join(outside)} lie outside the space: the sampler picks them",
                flush=True,
            )
    print(f"tune: study {study.study_name!r} has {finished} finished trials; running until it has {options.trials} "
          f"(storage: {options.storage or search.study_dir / 'study.db'})", flush=True)  # fmt: skip
    search.run(study, options.trials, finished_states)
    print(summary(search, study, options), flush=True)
    return study


def summary(search: Search, study, options) -> str:
    import optuna

    finished = [t for t in study.trials if t.state.is_finished()]
    parts = [f"study {study.study_name!r}: {len(finished)} finished trials, objective {search.metric} "
             f"({'max' if search.maximize else 'min'}imize); trials in {search.study_dir}"]  # fmt: skip
    completed = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    if completed:
        best = study.best_trial
        path = search.study_dir / "best.yaml"
        write_best(search, best, path)
        note = f" ({best.user_attrs['failure']})" if "failure" in best.user_attrs else ""
        params = {p.key: p.decode(best.params[p.key]) for p in search.params}
        parts.append(f"best: trial {best.number}, {search.metric} {best.value:.6g}{note}: {params}")
        parts.append(f"best config: {path}   (python -m forecasting fit --config {path})")
        parts.append(top_table(study, search.params, search.metric, options.top))
    else:
        parts.append("best: none (no trial completed)")
    parts.append(why_failed(finished, search.params))
    if completed:
        parts.append(importances(study, search.study_dir))
        if options.test == "true":
            parts.append(score_on_test(search, study, study.best_trial))
    text = "\n\n".join(parts)
    (search.study_dir / "summary.txt").write_text(text + "\n")
    return text
