"""Event-prediction scores: Kaplan-Meier against a hand table, AUC / Brier /
IBS against hand computations (no censoring: the Mann-Whitney AUC and the
plain Brier score; with censoring: the weights written out), and
statistically: IPCW scores on censored data agree with the same scores on
the uncensored truth, where the complete-case versions do not."""
import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from pyro_dgmm.errors import ConfigError, DataError
from pyro_dgmm.event_evaluation import (brier_score, calibration, integrated_brier_score, ipcw, kaplan_meier,
                                        landmark_scores, subject_folds, time_dependent_auc)


def test_kaplan_meier_matches_a_hand_table():
    km = kaplan_meier([1, 2, 2, 3, 4, 5], [1, 1, 0, 1, 0, 1])
    # event times 1, 2, 3, 5 with (at risk, events) (6, 1), (5, 1) (the one censored at 2 still at risk), (3, 1), (1, 1)
    np.testing.assert_array_equal(km.times, [1, 2, 3, 5])
    np.testing.assert_array_equal(km.at_risk, [6, 5, 3, 1])
    np.testing.assert_allclose(km.survival, [5 / 6, 4 / 6, 4 / 9, 0.0])
    np.testing.assert_allclose(km([0.5, 1, 2.5, 4.9, 5, 9]), [1, 5 / 6, 4 / 6, 4 / 9, 0, 0])
    np.testing.assert_allclose(km.left([1, 2, 5]), [1, 5 / 6, 4 / 9])


def test_without_censoring_the_auc_is_mann_whitney_and_the_brier_score_plain():
    rng = np.random.default_rng(0)
    n = 60
    time = rng.exponential(3.0, n) + 0.5
    status = rng.integers(1, 3, n)  # two causes, nobody censored
    predicted = np.round(rng.uniform(size=n), 1)  # ties between cases and controls
    landmark, horizon = 1.0, 2.0
    at_risk = time > landmark
    t, d, p = time[at_risk], status[at_risk], predicted[at_risk]
    case = t <= landmark + horizon
    u = mannwhitneyu(p[case], p[~case]).statistic
    assert time_dependent_auc(time, status, predicted, landmark=landmark, horizon=horizon) == pytest.approx(
        u / (case.sum() * (~case).sum()), rel=1e-12)
    assert brier_score(time, status, predicted, landmark=landmark, horizon=horizon) == pytest.approx(
        np.mean((case - p) ** 2), rel=1e-12)
    # cause 2 only: the events of cause 1 in the window are controls
    case2 = case & (d == 2)
    u2 = mannwhitneyu(p[case2], p[~case2]).statistic
    assert time_dependent_auc(time, status, predicted, landmark=landmark, horizon=horizon, cause=2) == pytest.approx(
        u2 / (case2.sum() * (~case2).sum()), rel=1e-12)
    assert brier_score(time, status, predicted, landmark=landmark, horizon=horizon, cause=2) == pytest.approx(
        np.mean((case2 - p) ** 2), rel=1e-12)


def test_the_censoring_weights_written_out():
    time = np.array([0.5, 2, 3, 4, 6, 7])
    status = np.array([1, 1, 0, 1, 0, 1])
    p = np.array([0.9, 0.6, 0.5, 0.3, 0.4, 0.2])
    # at risk at 1: the last five. Censoring KM among them: at 3 (4 at risk) 3/4, at 6 (2 at risk) 3/8.
    # window (1, 5]: events at 2 (weight 1/G(2-) = 1) and 4 (1/G(4-) = 4/3); censored at 3: weight 0;
    # T = 6, 7 > 5: weight 1/G(5) = 4/3 each
    at_risk, case, control, weight = ipcw(time, status, 1.0, 4.0)
    np.testing.assert_array_equal(at_risk, [False, True, True, True, True, True])
    np.testing.assert_array_equal(case, [True, False, True, False, False])
    np.testing.assert_array_equal(control, [False, False, False, True, True])
    np.testing.assert_allclose(weight, [1, 0, 4 / 3, 4 / 3, 4 / 3])
    brier = (1 * (1 - 0.6) ** 2 + 4 / 3 * (1 - 0.3) ** 2 + 4 / 3 * 0.4 ** 2 + 4 / 3 * 0.2 ** 2) / 5
    assert brier_score(time, status, p, landmark=1.0, horizon=4.0) == pytest.approx(brier, rel=1e-12)
    # pairs (case, control): (0.6, 0.4) 1, (0.6, 0.2) 1, (0.3, 0.4) 0, (0.3, 0.2) 1 with weights w_i w_j
    pairs = 1 * 4 / 3 * (1 + 1) + 4 / 3 * 4 / 3 * (0 + 1)
    assert time_dependent_auc(time, status, p, landmark=1.0, horizon=4.0) == pytest.approx(
        pairs / ((1 + 4 / 3) * (8 / 3)), rel=1e-12)


def test_the_integrated_brier_score_is_the_trapezoid_over_the_window():
    rng = np.random.default_rng(1)
    time = rng.exponential(4.0, 50)
    status = rng.integers(0, 2, 50)
    horizons = np.array([1.5, 2.0, 3.0])
    predicted = np.sort(rng.uniform(0, 1, (50, 3)), axis=1)
    b = [brier_score(time, status, predicted[:, g], landmark=1.0, horizon=u - 1.0) for g, u in enumerate(horizons)]
    expected = (0.5 * (0 + b[0]) / 2 + 0.5 * (b[0] + b[1]) / 2 + 1.0 * (b[1] + b[2]) / 2) / 2.0
    assert integrated_brier_score(time, status, predicted, horizons, landmark=1.0) == pytest.approx(expected)
    scores = landmark_scores(time, status, predicted, horizons, landmark=1.0)
    assert scores["ibs"] == pytest.approx(expected) and scores["brier"] == pytest.approx(b[2])
    assert scores["at_risk"] == int((time > 1).sum())


def simulated(n, seed):
    """Exponential event times with hazard exp(x) (so P(T <= t + dt | T > t) = 1 - exp(-exp(x) dt))
    and independent uniform censoring; the truth before censoring too."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    event = rng.exponential(1.0 / np.exp(x))
    censoring = rng.uniform(0, 2.5, n)
    time = np.minimum(event, censoring)
    status = (event <= censoring).astype(int)
    return x, event, time, status


def complete_case_brier(time, status, p, landmark, horizon):
    """The naive Brier score: drop the subjects censored in the window, no weights (biased)."""
    at_risk = time > landmark
    t, d, p = time[at_risk], status[at_risk], p[at_risk]
    known = (t > landmark + horizon) | (d > 0)
    return np.mean(((t[known] <= landmark + horizon) - p[known]) ** 2)


def test_ipcw_scores_on_censored_data_match_the_uncensored_truth():
    landmark, horizon = 0.3, 1.0
    x, event, time, status = simulated(4000, seed=2)
    true_risk = 1 - np.exp(-np.exp(x) * horizon)
    all_events = np.ones_like(status)
    kw = dict(landmark=landmark, horizon=horizon)
    assert (status == 0)[time > landmark].mean() > 0.4  # heavy censoring in the window
    for score, tolerance in ((brier_score, 0.008), (time_dependent_auc, 0.02)):
        for p in (true_risk, 0.5 * true_risk):
            assert score(time, status, p, **kw) == pytest.approx(score(event, all_events, p, **kw), abs=tolerance)
    naive = complete_case_brier(time, status, 0.5 * true_risk, landmark, horizon)
    assert abs(naive - brier_score(event, all_events, 0.5 * true_risk, **kw)) > 0.03  # what the weights correct


def test_a_perfect_score_gets_auc_one_and_a_random_one_a_half():
    x, event, time, status = simulated(3000, seed=3)
    kw = dict(landmark=0.2, horizon=1.0)
    assert time_dependent_auc(time, status, np.clip(1 - event / event.max(), 0, 1), **kw) == pytest.approx(1.0)
    random = np.random.default_rng(4).uniform(size=time.size)
    assert time_dependent_auc(time, status, random, **kw) == pytest.approx(0.5, abs=0.03)
    assert time_dependent_auc(time, status, 1 - np.exp(-np.exp(x)), **kw) > 0.7


def test_calibration_is_small_for_the_truth_and_finds_a_known_shift():
    landmark, horizon = 0.3, 1.0
    x, event, time, status = simulated(4000, seed=5)
    true_risk = 1 - np.exp(-np.exp(x) * horizon)
    kw = dict(landmark=landmark, horizon=horizon)
    good = calibration(time, status, true_risk, **kw)
    assert good.ici < 0.02 and good.e50 < 0.02 and good.e90 < 0.05
    shifted = np.clip(true_risk - 0.1, 0.0, 1.0)  # too low by 0.1 except where clipped at 0
    bad = calibration(time, status, shifted, **kw)
    assert bad.e50 == pytest.approx(0.1, abs=0.02) and bad.ici > 0.07
    assert good.predicted.shape == good.observed.shape == ((time > landmark).sum(),)


def test_bad_input_is_named():
    time, status = np.array([1.0, 2.0, 3.0]), np.array([1, 0, 1])
    with pytest.raises(DataError, match="shape"):
        brier_score(time, status, np.array([0.1, 0.2]), landmark=0.5, horizon=1.0)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        brier_score(time, status, np.array([0.1, 1.2, 0.3]), landmark=0.5, horizon=1.0)
    with pytest.raises(DataError, match="no subject is at risk"):
        brier_score(time, status, np.array([0.1, 0.2, 0.3]), landmark=5.0, horizon=1.0)
    with pytest.raises(DataError, match="cases and controls"):
        time_dependent_auc(time, status, np.array([0.1, 0.2, 0.3]), landmark=0.5, horizon=5.0)
    with pytest.raises(ConfigError, match="horizon"):
        brier_score(time, status, np.array([0.1, 0.2, 0.3]), landmark=0.5, horizon=0.0)
    with pytest.raises(ConfigError, match="increasing times after the landmark"):
        integrated_brier_score(time, status, np.zeros((3, 2)), [2.0, 1.5], landmark=0.5)


def test_subject_folds_keep_subjects_together_and_balance_the_folds():
    ids = np.repeat(np.arange(23), 3)
    folds = subject_folds(ids, k=5, seed=0)
    assert all(len(set(folds[ids == i])) == 1 for i in range(23))
    sizes = np.bincount(folds[::3], minlength=5)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 23
    assert not np.array_equal(folds, subject_folds(ids, k=5, seed=1))
    with pytest.raises(ConfigError, match="k must be"):
        subject_folds(ids, k=1)


def test_the_calibration_plot_draws_the_curve_and_the_diagonal():
    from pyro_dgmm.plotting_joint import plot_calibration
    x, event, time, status = simulated(300, seed=6)
    fit = calibration(time, status, 1 - np.exp(-np.exp(x)), landmark=0.3, horizon=1.0)
    figure = plot_calibration(fit, label="truth")
    lines = figure.axes[0].get_lines()
    assert lines[0].get_label().startswith(f"truth (ICI {fit.ici:.3f}")
    np.testing.assert_array_equal(lines[0].get_xdata(), np.sort(fit.predicted))
    assert lines[1].get_label() == "perfect calibration"
