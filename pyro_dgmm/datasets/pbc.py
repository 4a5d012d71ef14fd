"""Mayo Clinic primary biliary cholangitis (PBC) follow-up data.

The data are the R ``survival::pbcseq`` dataset: 312 patients of the Mayo
Clinic D-penicillamine trial (1974-1984), 1945 visits with repeated
laboratory measurements. See ``data/PBCSEQ_LICENSE.txt`` for the source,
references and licence (LGPL >= 2, separate from the library's licence).

Missing values are kept as ``NaN``: for the outcome columns a missing value
is a missing outcome, which the DGMM likelihood simply skips.

Example:

>>> df = load_pbc()
>>> df["id"].nunique()
312
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd

__all__ = [
    "PBC_CODEBOOK",
    "PBC_COVARIATES",
    "PBC_ID",
    "PBC_OUTCOMES",
    "PBC_TIME",
    "load_pbc",
    "load_pbc_events",
]

_DATA_FILE = "pbcseq.csv"
_DAYS_PER_YEAR = 365.25

PBC_ID = "id"
PBC_TIME = "years"
PBC_COVARIATES = ["age", "sex", "trt"]

#: Suggested outcome families for a DGMM of the PBC visits.
PBC_OUTCOMES = {
    "log_bili": "gaussian",
    "albumin": "gaussian",
    "protime": "gaussian",
    "ascites": "bernoulli",
    "hepato": "bernoulli",
    "spiders": "bernoulli",
}

#: Meaning and units of every column returned by :func:`load_pbc`.
PBC_CODEBOOK = {
    "id": "patient identifier (1-312)",
    "futime": "days from enrolment to death, transplant or end of follow-up (July 1986)",
    "status": "status at end of follow-up: 0 censored, 1 transplant, 2 death",
    "trt": "randomised treatment: 1 D-penicillamine (158 patients), 0 placebo (154; coded 2 in R)",
    "age": "age at enrolment (years)",
    "sex": "sex: 'f' female, 'm' male",
    "day": "days from enrolment to this visit; the lab values below refer to this visit",
    "ascites": "presence of ascites (0 no, 1 yes; NaN not recorded)",
    "hepato": "presence of hepatomegaly, an enlarged liver (0 no, 1 yes; NaN not recorded)",
    "spiders": "presence of spider angiomas, blood vessel malformations in the skin "
    "(0 no, 1 yes; NaN not recorded)",
    "edema": "oedema: 0 none, 0.5 untreated or successfully treated, 1 despite diuretic therapy",
    "bili": "serum bilirubin (mg/dl)",
    "chol": "serum cholesterol (mg/dl)",
    "albumin": "serum albumin (g/dl)",
    "alk_phos": "alkaline phosphatase (U/l)",
    "ast": "aspartate aminotransferase, formerly SGOT (U/ml)",
    "platelet": "platelet count (10^3 per mm^3)",
    "protime": "standardised blood clotting time (prothrombin time, seconds)",
    "stage": "histologic stage of disease, 1-4 (needs biopsy)",
    "years": "years from enrolment to this visit (day / 365.25)",
    "futime_years": "years from enrolment to death, transplant or end of follow-up "
    "(futime / 365.25)",
    "log_bili": "natural log of serum bilirubin (log mg/dl)",
}


def load_pbc() -> pd.DataFrame:
    """Load the PBC follow-up visits, one row per visit.

    Returns
    -------
    pandas.DataFrame
        1945 rows (312 patients), sorted by ``id`` then ``day``, with the
        columns of the shipped file (see :data:`PBC_CODEBOOK`) plus

        * ``years = day / 365.25``: visit time in years since enrolment
          (the time axis, :data:`PBC_TIME`),
        * ``futime_years = futime / 365.25``,
        * ``log_bili = log(bili)``.

        ``sex`` is a categorical with categories ``['f', 'm']``. The binary
        markers ``ascites``, ``hepato`` and ``spiders`` are floats 0/1 with
        ``NaN`` where the marker was not recorded at that visit.
    """
    source = resources.files("pyro_dgmm.datasets").joinpath("data", _DATA_FILE)
    with source.open("r", encoding="utf-8") as handle:
        frame = pd.read_csv(handle)
    frame["sex"] = pd.Categorical(frame["sex"], categories=["f", "m"])
    frame["years"] = frame["day"] / _DAYS_PER_YEAR
    frame["futime_years"] = frame["futime"] / _DAYS_PER_YEAR
    frame["log_bili"] = np.log(frame["bili"])
    return frame.sort_values([PBC_ID, "day"], kind="stable").reset_index(drop=True)


def load_pbc_events() -> pd.DataFrame:
    """The event records of the PBC patients, one row per patient, for a
    joint model with the visits of :func:`load_pbc`.

    Returns
    -------
    pandas.DataFrame
        312 rows sorted by ``id``: ``id``, ``futime`` (days), ``futime_years``
        (the follow-up time on the visits' ``years`` scale), ``status`` (0
        censored, 1 transplant, 2 death) and the baseline ``age``, ``sex``,
        ``trt``.  Every visit is at or before the patient's ``futime``.

    Example (competing risks: transplant and death):

    >>> events = load_pbc_events()
    >>> events["status"].value_counts().sort_index().tolist()
    [143, 29, 140]
    """
    columns = [PBC_ID, "futime", "futime_years", "status", "age", "sex", "trt"]
    return load_pbc()[columns].drop_duplicates(PBC_ID).reset_index(drop=True)
