"""Calibration scores by hand, split-conformal coverage, and the risk baselines' training-only fits."""

import math

import numpy as np
import pandas as pd
import pytest

from forecasting import calibration, garch, risk_baselines
from forecasting.calibration import Forecast
from forecasting.data.datamodule import PriceDataModule
from tests.conftest import dm_kwargs, make_prices


def test_kupiec_matches_a_hand_computation():
    # 250 days, 5 breaches of the 1% VaR: 2.0% against 1%.
    lr, p = calibration.kupiec(5, 250, 0.01)
    hand = -2 * ((245 * math.log(0.99) + 5 * math.log(0.01)) - (245 * math.log(0.98) + 5 * math.log(0.02)))
    assert lr == pytest.approx(hand, rel=1e-12) and lr == pytest.approx(1.9568, abs=1e-4)
    assert p == pytest.approx(math.erfc(math.sqrt(lr / 2)), rel=1e-9)  # chi-square(1) tail
    assert calibration.kupiec(0, 100, 0.05)[0] == pytest.approx(-2 * 100 * math.log(0.95))  # no breach at all
    assert calibration.kupiec(5, 100, 0.05) == (0.0, 1.0)  # exactly nominal


def test_pinball_coverage_and_breaches_by_hand():
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    q = np.array([[[-2.0, -1.0, 0.0, 1.0, 2.0]]] * 4)  # (4 samples, 1 step, 5 levels)
    y = np.array([[-3.0], [-0.5], [0.5], [1.5]])
    scores = calibration.evaluate(Forecast("quantiles", q, levels), y, returns=True)
    # level 0.05 at q=-2: y - q = (-1, 1.5, 2.5, 3.5) -> 0.95, 0.075, 0.125, 0.175
    assert scores["pinball_05"] == pytest.approx((0.95 + 0.075 + 0.125 + 0.175) / 4)
    assert scores["coverage_50"] == pytest.approx(0.5)  # -0.5 and 0.5 inside [-1, 1]
    assert scores["coverage_90"] == pytest.approx(0.75)  # -3 outside [-2, 2]
    assert scores["breach_05"] == pytest.approx(0.25) and scores["breach_01"] == pytest.approx(0.25)
    assert scores["width_90"] == pytest.approx(4.0)
    pit = Forecast("quantiles", q, levels).cdf(y)[:, 0]
    np.testing.assert_allclose(pit, [0.025, 0.375, 0.625, 0.85])  # below the 5% quantile: half of it


def test_gaussian_crps_closed_form_and_quantile_version_agree():
    forecast = Forecast("gaussian", np.array([[[0.0, 1.0]], [[1.0, 2.0]]]))
    y = np.array([[0.0], [0.0]])
    closed = forecast.crps(y)[:, 0]
    assert closed[0] == pytest.approx(2 / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi))  # N(0,1) at 0: 0.2337
    grid = 2 * np.mean([calibration.pinball(forecast.quantile(t), y, t) for t in calibration.CRPS_LEVELS], 0)[:, 0]
    np.testing.assert_allclose(grid, closed, rtol=0.01)  # 100 levels: within 1%


@pytest.mark.parametrize("family", ["point", "gaussian", "quantiles"])
def test_split_conformal_coverage_is_nominal_on_exchangeable_data(family):
    rng = np.random.default_rng(0)
    y_cal, y_test = (rng.standard_t(4, (n, 1)) * 0.02 + 0.001 for n in (2000, 20000))
    params = {  # deliberately miscalibrated: too narrow; conformal must fix the coverage anyway
        "point": np.zeros((1, 1, 1)),
        "gaussian": np.array([[[0.0, 0.005]]]),
        "quantiles": np.array([[[-0.01, -0.002, 0.0, 0.002, 0.01]]]),
    }[family]
    levels = [0.05, 0.25, 0.5, 0.75, 0.95] if family == "quantiles" else None
    cal = Forecast(family, np.broadcast_to(params, (len(y_cal), 1, params.shape[-1])), levels)
    test = Forecast(family, np.broadcast_to(params, (len(y_test), 1, params.shape[-1])), levels)
    radius = calibration.fit_conformal(cal, y_cal)
    scores = calibration.evaluate(test, y_test, returns=False, conformal=radius)
    assert abs(scores["conformal_coverage_90"] - 0.9) < 0.02
    assert abs(scores["conformal_coverage_50"] - 0.5) < 0.02
    if family != "point":
        assert scores["coverage_90"] < 0.8  # the uncorrected intervals were far off


def returns_module(path, **kw) -> PriceDataModule:
    dm = PriceDataModule(**dm_kwargs(path, target="log_return", **kw))
    dm.setup("fit")
    return dm


def test_garch_is_fitted_on_training_rows_only(tmp_path):
    prices = make_prices(n_days=400)
    prices.to_csv(tmp_path / "a.csv", index=False)
    before = returns_module(tmp_path / "a.csv").stats["risk"]
    assert set(before["garch"]) == {"AAA", "BBB"} and all(0 < p[2] + p[3] < 1 for p in before["garch"].values())
    dates = sorted(prices["date"].unique())
    val_row = prices.index[(prices["ticker"] == "AAA") & (prices["date"] == dates[300])][0]  # after val_start 0.6
    changed = prices.copy()
    changed.loc[val_row, ["open", "high", "low", "close"]] *= 1.3  # a 30% jump on a validation day
    changed.to_csv(tmp_path / "b.csv", index=False)
    dm = returns_module(tmp_path / "b.csv")
    assert dm.stats["risk"] == before  # GARCH, EWMA start and empirical quantiles: all unchanged
    train_row = prices.index[(prices["ticker"] == "AAA") & (prices["date"] == dates[100])][0]
    changed = prices.copy()
    changed.loc[train_row, ["open", "high", "low", "close"]] *= 1.3
    changed.to_csv(tmp_path / "c.csv", index=False)
    assert returns_module(tmp_path / "c.csv").stats["risk"]["garch"]["AAA"] != before["garch"]["AAA"]
    # ... and the forecasts on the perturbed file are the same up to that day (nothing looks ahead)
    scale = dm.dataset("val").risk_baselines["garch"][:, 0, 1].numpy()
    same = returns_module(tmp_path / "a.csv").dataset("val").risk_baselines["garch"][:, 0, 1].numpy()
    np.testing.assert_array_equal(scale[:val_row], same[:val_row])
    assert not np.allclose(scale[val_row], same[val_row])


def test_garch_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    omega, alpha, beta, n = 2e-6, 0.1, 0.85, 4000
    r, v = np.empty(n), omega / (1 - alpha - beta)
    for t in range(n):
        r[t] = math.sqrt(v) * rng.standard_normal()
        v = omega + alpha * r[t] ** 2 + beta * v
    mu, w, a, b = garch.fit_garch(r)
    assert abs(a - alpha) < 0.04 and abs(b - beta) < 0.05 and abs(mu) < 5e-4


def simulate_garch(n, seed, mu=3e-4, omega=2e-6, alpha=0.1, beta=0.85):
    rng = np.random.default_rng(seed)
    r, v = np.empty(n), omega / (1 - alpha - beta)
    for t in range(n):
        r[t] = mu + math.sqrt(v) * rng.standard_normal()
        v = omega + alpha * (r[t] - mu) ** 2 + beta * v
    return r


def garch_loglik(params, r):
    """arch's log-likelihood of [mu, omega, alpha, beta] on percent returns (what it reports)."""
    y = r * 100
    resid = y - y.mean()
    w = 0.94 ** np.arange(min(75, len(y)))
    backcast = float(np.sum(resid[: len(w)] ** 2 * w / w.sum()))
    mu, omega, alpha, beta = params[0] * 100, params[1] * 1e4, params[2], params[3]
    return -garch._garch_nll(np.array([mu, omega, alpha, beta]), y, backcast)[0]


@pytest.mark.parametrize(
    "seed, n, alpha, beta", [(0, 1000, 0.1, 0.85), (1, 2500, 0.05, 0.93), (2, 5000, 0.2, 0.6), (3, 3000, 0.1, 0.85)]
)
def test_garch_fit_matches_arch(seed, n, alpha, beta):
    arch = pytest.importorskip("arch")
    r = simulate_garch(n, seed, alpha=alpha, beta=beta)
    ours = garch.fit_garch(r)
    fitted = arch.arch_model(r * 100, mean="Constant", vol="GARCH", p=1, q=1, dist="normal", rescale=False)
    fitted = fitted.fit(disp="off")
    theirs = [
        fitted.params["mu"] / 100,
        fitted.params["omega"] / 1e4,
        fitted.params["alpha[1]"],
        fitted.params["beta[1]"],
    ]
    assert garch_loglik(ours, r) >= fitted.loglikelihood - 1e-6 * n
    assert garch_loglik(theirs, r) == pytest.approx(fitted.loglikelihood, rel=1e-9)  # the same model
    assert abs(ours[2] - theirs[2]) < 0.01 and abs(ours[3] - theirs[3]) < 0.01
    assert ours[0] == pytest.approx(theirs[0], abs=1e-5) and ours[1] == pytest.approx(theirs[1], rel=0.05)


def test_garch_gradient_is_exact():
    r = simulate_garch(500, seed=4) * 100
    params, backcast = np.array([0.03, 0.02, 0.08, 0.9]), float(np.mean(r[:75] ** 2))
    _, grad = garch._garch_nll(params, r, backcast)
    for k in range(4):
        step = np.zeros(4)
        step[k] = 1e-6
        up, down = (garch._garch_nll(params + s, r, backcast)[0] for s in (step, -step))
        assert grad[k] == pytest.approx((up - down) / 2e-6, rel=1e-5)


def reference_one_step_variance(returns, ticker, var0, step):
    """risk_baselines.one_step_variance as it was before lfilter: a Python loop over every row."""
    out = np.full(len(returns), np.nan)
    for t, index in pd.Series(np.arange(len(returns))).groupby(ticker, sort=False):
        s2 = var0.get(str(t), float("nan"))
        for i in index.to_numpy():
            r = returns[i]
            if math.isfinite(r):
                s2 = step(str(t), s2, r)
            out[i] = s2
    return out


def test_variance_recursions_equal_the_reference_loop():
    rng = np.random.default_rng(5)
    n = 3000
    ticker = rng.choice(np.array(["AAA", "BBB", "CCC", "NEW", "ALLNAN"], dtype=object), n, p=[0.3, 0.3, 0.2, 0.1, 0.1])
    ticker = ticker[np.argsort(ticker, kind="stable")]  # each ticker's rows together, as the data module sorts them
    returns = rng.standard_normal(n) * 0.02
    returns[rng.random(n) < 0.15] = np.nan
    returns[:5] = np.nan  # leading NaNs: the training variance carries
    returns[ticker == "ALLNAN"] = np.nan
    var0 = {"AAA": 4e-4, "BBB": 1e-4, "CCC": float("nan"), "ALLNAN": 2e-4}  # NEW: unseen in training
    garch = {"AAA": [1e-3, 1e-5, 0.1, 0.85], "BBB": [-2e-4, 3e-6, 0.05, 0.9], "CCC": [0.0, 1e-6, 0.2, 0.7],
             "ALLNAN": [0.0, 1e-6, 0.1, 0.8]}  # fmt: skip

    def garch_step(t, s2, r):
        if t not in garch:
            return float("nan")
        mu, omega, alpha, beta = garch[t]
        return omega + alpha * (r - mu) ** 2 + beta * s2

    def ewma_step(t, s2, r):
        return risk_baselines.EWMA_LAMBDA * s2 + (1 - risk_baselines.EWMA_LAMBDA) * r * r

    params = {"var0": var0, "garch": garch}
    for ours, step in [
        (risk_baselines.garch_variance(returns, ticker, params, 1)[:, 0], garch_step),
        (risk_baselines.ewma_variance(returns, ticker, var0), ewma_step),
    ]:
        reference = reference_one_step_variance(returns, ticker, var0, step)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(reference))
        np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=0)
        assert np.isnan(ours[ticker == "NEW"]).all() and np.isnan(ours[ticker == "CCC"]).all()
        assert (ours[ticker == "ALLNAN"] == 2e-4).all()
        assert np.isfinite(ours[(ticker == "AAA") | (ticker == "BBB")]).all()


def test_many_garch_fits_in_worker_processes_equal_the_fits_one_by_one():
    rng = np.random.default_rng(7)
    series = []
    for k in range(garch.PARALLEL_FITS + 6):  # enough fits for the worker processes
        var, r = 1e-4, np.empty(300)
        for t in range(300):
            r[t] = np.sqrt(var) * rng.standard_normal()
            var = 1e-6 + (0.05 + 0.002 * (k % 10)) * r[t] ** 2 + 0.9 * var
        series.append(r)
    one_by_one = [garch.fit_garch(r) for r in series]
    assert garch.fit_many(series, workers=2) == one_by_one  # the same numbers, not just close
    assert garch.fit_many(series[:3], workers=2) == one_by_one[:3]  # few fits: in this process
