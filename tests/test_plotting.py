"""Figures (pyro_dgmm.plotting, pyro_dgmm.plotting_predict): probability
axes on [0, 1], interval bands, readable log ticks, calibration intervals
and the marker-size legend."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from pyro_dgmm.errors import DataError  # noqa: E402
from pyro_dgmm.fit import FitResult  # noqa: E402
from pyro_dgmm.plotting import log_ticks, plot_loss, plot_subjects  # noqa: E402
from pyro_dgmm.plotting_predict import plot_calibration, wilson_interval  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def fitted_frame(levels=(), predictive=False) -> pd.DataFrame:
    """Two subjects, a Gaussian outcome and a rare binary one (fitted
    probabilities 0.004 to 0.04, the case that used to fill the panel)."""
    rng = np.random.default_rng(0)
    t = np.tile(np.arange(5.0), 2)
    frame = pd.DataFrame({"id": np.repeat([1, 2], 5), "time": t, "y": rng.normal(size=10) + 10,
                          "bin": (rng.uniform(size=10) < 0.02).astype(float)})
    frame["y_fitted"] = 10 + 0.1 * t
    frame["bin_fitted"] = np.linspace(0.004, 0.04, 10)
    for level in levels:
        label = f"{100 * level:g}"
        for name, width in (("y", 1.0), ("bin", 0.01)):
            frame[f"{name}_lower_{label}"] = frame[f"{name}_fitted"] - width * level
            frame[f"{name}_upper_{label}"] = frame[f"{name}_fitted"] + width * level
            if predictive:
                frame[f"{name}_predictive_lower_{label}"] = frame[f"{name}_fitted"] - 3 * width
                frame[f"{name}_predictive_upper_{label}"] = frame[f"{name}_fitted"] + 3 * width
    return frame


@pytest.mark.parametrize("families", [{"y": "gaussian", "bin": "bernoulli"}, None])
def test_binary_panels_are_on_the_unit_interval(families):
    fig = plot_subjects(fitted_frame(), ["y", "bin"], id_col="id", time_col="time", subjects=[1, 2],
                        families=families)
    axes = np.asarray(fig.axes).reshape(2, 2)
    for ax in axes[1]:
        low, high = ax.get_ylim()
        assert low <= 0 and high >= 1 and high - low < 1.1  # [0, 1], a small margin
    assert axes[1, 0].get_ylabel() == "P(bin)"
    low, high = axes[0, 0].get_ylim()
    assert high - low < 5  # the Gaussian panel keeps its own scale


def test_rare_counts_are_not_taken_for_probabilities():
    frame = fitted_frame().assign(bin_fitted=np.linspace(0.5, 1.5, 10))  # 0/1 observed, means above 1
    ax = plot_subjects(frame, ["bin"], id_col="id", time_col="time", subjects=[2]).axes[0]
    assert ax.get_ylabel() == "bin" and ax.get_ylim()[1] > 1.4


def test_bounded_panels_use_their_bounds():
    frame = fitted_frame().assign(y=4.0, y_fitted=4.2)
    fig = plot_subjects(frame, ["y"], id_col="id", time_col="time", subjects=[1], families={"y": "bounded(1,7)"})
    low, high = fig.axes[0].get_ylim()
    assert low < 1 < 7 < high < 7.5 and fig.axes[0].get_ylabel() == "y"


def test_bands_are_drawn_from_interval_columns():
    def bands(fig):
        return [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]

    plain = plot_subjects(fitted_frame(), ["y", "bin"], id_col="id", time_col="time", subjects=[1, 2])
    assert not bands(plain)
    banded = plot_subjects(fitted_frame(levels=(0.5, 0.9)), ["y", "bin"], id_col="id", time_col="time",
                           subjects=[1, 2])
    assert len(bands(banded)) == 4  # one band per panel
    band = bands(banded)[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(10 - 0.9) and band.max() == pytest.approx(10.4 + 0.9)  # the widest level
    both = plot_subjects(fitted_frame(levels=(0.9,), predictive=True), ["y"], id_col="id", time_col="time",
                         subjects=[1], level=0.9)
    assert len(bands(both)) == 2
    assert "90% band of the mean" in [t.get_text() for t in both.axes[0].get_legend().get_texts()]
    with pytest.raises(DataError, match="y_lower_80"):
        plot_subjects(fitted_frame(levels=(0.9,)), ["y"], id_col="id", time_col="time", subjects=[1], level=0.8)


@pytest.mark.parametrize("low, high", [(1.6, 3.0), (100.0, 1e5), (0.5, 0.51), (12.3, 13.9), (0.03, 0.9)])
def test_log_ticks_are_round_and_several(low, high):
    ticks = log_ticks(low, high)
    assert 3 <= len(ticks) <= 6 and all(low <= t <= high for t in ticks) and ticks == sorted(set(ticks))
    assert all(len(f"{t:g}".replace(".", "").strip("0")) <= 3 for t in ticks)  # at most 3 significant digits


def test_loss_plot_labels_several_ticks():
    result = FitResult(config={}, train_loss=list(np.linspace(3.0, 1.6, 30)), validation_loss=[(5, 2.4), (25, 1.9)])
    ax = plot_loss(result).axes[0]
    low, high = ax.get_ylim()
    labels = [tick.get_text() for tick in ax.get_yticklabels() if low <= tick.get_position()[1] <= high]
    assert len([text for text in labels if text]) >= 3
    negative = FitResult(config={}, train_loss=[50.0, 3.0, -20.0, -40.0])
    assert plot_loss(negative).axes[0].get_yscale() == "symlog"


def test_wilson_interval_matches_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    successes, n = np.array([0, 3, 10, 20]), np.array([10, 12, 40, 20])
    lower, upper = wilson_interval(successes, n, 0.9)
    expected = proportion_confint(successes, n, alpha=0.1, method="wilson")
    np.testing.assert_allclose(lower, expected[0], atol=1e-12)
    np.testing.assert_allclose(upper, expected[1], atol=1e-12)


def test_calibration_plot_has_intervals_and_a_size_legend():
    calibration = pd.DataFrame({"outcome": ["a"] * 3 + ["b"] * 2, "bin_lower": [0, 0.3, 0.6, 0, 0.5],
                                "bin_upper": [0.3, 0.6, 1, 0.5, 1], "n": [200, 40, 5, 30, 30],
                                "mean_predicted": [0.1, 0.45, 0.8, 0.2, 0.7],
                                "observed_rate": [0.12, 0.5, 0.6, 0.2, 0.8]})
    fig = plot_calibration(calibration)
    first = fig.axes[0]
    segments = [c for c in first.collections if type(c).__name__ == "LineCollection"]
    assert segments and len(segments[0].get_segments()) == 3  # one interval per bin
    lows = sorted(segment[:, 1].min() for segment in segments[0].get_segments())
    expected = sorted(wilson_interval(np.array([24, 20, 3]), np.array([200, 40, 5]))[0])
    np.testing.assert_allclose(lows, expected, atol=1e-9)
    legend = fig.axes[-1].get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[0].startswith("n = ") and len(texts) >= 2
