"""Figures every N validations, scalars every time (GradientFlow.figure_every_n, ForecastPlot.every_n_validations)."""

import threading

import pytest

from forecasting.callbacks import forecast_plot, grad_flow
from forecasting.callbacks.forecast_plot import ForecastPlot
from forecasting.callbacks.grad_flow import GradientFlow
from tests.test_diagnostics import batches, events, fit, model


def test_figures_at_validations_0_n_2n_and_scalars_at_every_one(tmp_path):
    flow, plot = GradientFlow(figure_every_n=2), ForecastPlot(every_n_validations=2)
    trainer = fit(model(dense_loss=False), tmp_path, [flow, plot], train=batches(2, dense=False), max_epochs=5)
    ea = events(trainer)
    ends = [2 * (epoch + 1) for epoch in range(5)]  # global_step after each epoch's 2 batches
    # GradientFlow measures at the sanity check (step 0) and after each of the 5 validations.
    assert [e.step for e in ea.Scalars("grad_flow/first_to_last")] == [0, *ends]
    assert [e.step for e in ea.Images("grad_flow/per_step")] == [0, ends[1], ends[3]]  # measurements 0, 2, 4
    # ForecastPlot counts the validations of fit, not the sanity check: validations 0, 2, 4.
    assert [e.step for e in ea.Images("forecast/val")] == [ends[0], ends[2], ends[4]]


def test_an_interval_of_one_draws_every_time(tmp_path):
    trainer = fit(
        model(dense_loss=False), tmp_path, [GradientFlow(figure_every_n=1), ForecastPlot(every_n_validations=1)],
        train=batches(2, dense=False), max_epochs=3,
    )  # fmt: skip
    ea = events(trainer)
    assert [e.step for e in ea.Images("grad_flow/per_step")] == [0, 2, 4, 6]
    assert [e.step for e in ea.Images("forecast/val")] == [2, 4, 6]


def test_figures_are_drawn_off_the_training_thread_and_their_errors_reach_fit(tmp_path, monkeypatch):
    threads = []
    draw = forecast_plot.draw_forecasts

    def recording(*args):
        threads.append(threading.current_thread())
        draw(*args)

    monkeypatch.setattr(forecast_plot, "draw_forecasts", recording)
    trainer = fit(model(dense_loss=False), tmp_path, [ForecastPlot(every_n_validations=1)],
                  train=batches(2, dense=False), max_epochs=2)  # fmt: skip
    assert len(threads) == 2 and threading.main_thread() not in threads
    assert [e.step for e in events(trainer).Images("forecast/val")] == [2, 4]  # all written when fit returns

    def broken(*args):
        raise RuntimeError("the figure could not be drawn")

    monkeypatch.setattr(grad_flow, "draw_gradient_flow", broken)
    with pytest.raises(RuntimeError, match="could not be drawn"):
        fit(model(dense_loss=False), tmp_path / "b", [GradientFlow()], train=batches(2, dense=False), max_epochs=1)
