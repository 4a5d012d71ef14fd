"""Small helpers shared by the tests."""
import numpy as np
import pandas as pd


def tiny_frame(n_subjects: int = 12, n_visits: int = 5, seed: int = 0) -> pd.DataFrame:
    """A small long frame with all four families, covariates, gaps and irregular times."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_subjects) + 100, n_visits)
    time = np.tile(np.arange(n_visits, dtype=float), n_subjects) + rng.uniform(0, 0.3, ids.size)
    b = rng.normal(size=n_subjects)[ids - 100]
    frame = pd.DataFrame({
        "pid": ids,
        "t": time,
        "g": 1.0 + 0.5 * time + b + rng.normal(0, 0.3, ids.size),
        "bin": (rng.uniform(size=ids.size) < 1 / (1 + np.exp(-b))).astype(float),
        "count": rng.poisson(np.exp(0.3 + 0.2 * b)).astype(float),
        "score": np.clip(4 + b + rng.normal(0, 0.5, ids.size), 1, 7),
        "age": rng.normal(50, 10, n_subjects)[ids - 100],
        "arm": np.where(rng.uniform(size=n_subjects) < 0.5, "a", "b")[ids - 100],
    })
    frame.loc[rng.uniform(size=ids.size) < 0.2, ["g", "score"]] = np.nan
    frame.loc[rng.uniform(size=ids.size) < 0.2, "bin"] = np.nan
    return frame


OUTCOMES = {"g": "gaussian", "bin": "bernoulli", "count": "poisson", "score": "bounded(1,7)"}


def fit_tiny_mixed_model(time_basis: str = "poly(1)", max_epochs: int = 5):
    """A briefly fitted four-family DeepMixedModel on ``tiny_frame(30)``."""
    from pyro_dgmm import DeepMixedModel

    est = DeepMixedModel(id_col="pid", time_col="t", outcomes=OUTCOMES, covariates=["age", "arm"],
                         time_basis=time_basis)
    return est.fit(tiny_frame(n_subjects=30), max_epochs=max_epochs, progress=False)


def linear_designs(df: pd.DataFrame, covariates: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The designs of ``simulate_linear``'s model for the rows of ``df``:
    fixed X = [1, t, age, treated] ([1, t] without ``covariates``), random Z = [1, t]."""
    X = np.column_stack([np.ones(len(df)), df.time, df.age, (df.group == "treated").astype(float)])
    return (X if covariates else X[:, :2]), np.column_stack([np.ones(len(df)), df.time])


def mixedlm_reference(df: pd.DataFrame, covariates: bool = True):
    """statsmodels' MixedLM (ML) with random intercept and slope on data of
    ``simulate_linear`` (designs: :func:`linear_designs`).  Returns (X, Z,
    fitted MixedLM results)."""
    import warnings

    from statsmodels.regression.mixed_linear_model import MixedLM

    X, Z = linear_designs(df, covariates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return X, Z, MixedLM(df.y.to_numpy(), X, groups=df.id.to_numpy(), exog_re=Z).fit(reml=False)
