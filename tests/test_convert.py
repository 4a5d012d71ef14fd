"""ArviZ export: groups, dims, coords and shapes; az.loo / az.waic /
az.summary / az.plot_ppc on it; netCDF round trip."""
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pyro_dgmm import DeepMixedModel  # noqa: E402
from pyro_dgmm.convert import _arviz, to_inference_data  # noqa: E402
from pyro_dgmm.predict import posterior_predictive  # noqa: E402

from common import OUTCOMES, tiny_frame  # noqa: E402

az = _arviz()
S = 100


@pytest.fixture(scope="module")
def fitted():
    """String ids (coords must keep them), all families, gaps, uneven visits."""
    frame = tiny_frame(n_subjects=20)
    frame["pid"] = "p" + frame["pid"].astype(str)
    frame = frame.drop(index=frame.index[frame.pid == "p103"][-2:])  # a subject with 3 visits: padding
    est = DeepMixedModel(id_col="pid", time_col="t", outcomes=OUTCOMES, covariates=["age", "arm"],
                         time_basis="spline(3)").fit(frame, max_epochs=3, progress=False)
    predictive = posterior_predictive(est.model_, est.guide_, est.data_, num_samples=S)
    idata = to_inference_data(predictive, est.schema_, cell_log_likelihood=True, attrs={"epochs": 3, "fit": {"a": 1}})
    return frame, est, predictive, idata


def test_groups_dims_coords_and_shapes(fitted):
    frame, est, predictive, idata = fitted
    names = [f"y_{k}" for k in OUTCOMES]
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "observed_data", "log_likelihood",
                                   "constant_data"}
    assert idata.posterior["b"].dims == ("chain", "draw", "subject", "latent")
    assert idata.posterior["b"].shape == (1, S, 20, est.latent_dim_)
    assert idata.posterior.subject.values.tolist() == sorted(frame.pid.unique())
    assert idata.posterior.latent.values.tolist() == list(range(est.latent_dim_))
    for name in names:
        assert idata.posterior_predictive[name].dims == ("chain", "draw", "subject", "visit")
        assert idata.posterior_predictive[name].shape == (1, S, 20, 5)
        assert idata.observed_data[name].dims == ("subject", "visit")
        assert idata.log_likelihood[name].dims == ("chain", "draw", "subject", "visit")
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "subject")
    assert idata.constant_data["covariates"].coords["covariate"].values.tolist() == ["age", "arm[T.b]"]
    assert idata.posterior.attrs["inference_library"] == "pyro"
    assert idata.posterior.attrs["posterior_method"] == "importance"
    assert idata.posterior.attrs["fit"] == '{"a": 1}'


def test_values_follow_the_data_and_padding_is_nan(fitted):
    frame, est, predictive, idata = fitted
    data = est.data_
    mask, visits = data.mask.numpy(), data.visit_mask.numpy()
    observed = idata.observed_data["y_g"].values
    assert np.array_equal(~np.isnan(observed), mask[..., 0])
    np.testing.assert_allclose(observed[mask[..., 0]], data.response_values(data.y)[..., 0][mask[..., 0]], rtol=1e-6)
    pp = idata.posterior_predictive["y_g"].values[0]
    assert np.array_equal(~np.isnan(pp), np.broadcast_to(visits, pp.shape))  # unobserved visits drawn too
    assert (idata.posterior_predictive["y_score"].values[0][:, visits] >= 1).all()
    p103 = idata.constant_data["time"].sel(subject="p103").values
    np.testing.assert_allclose(p103[:3], frame[frame.pid == "p103"].t.sort_values(), rtol=1e-6)
    assert np.isnan(p103[3:]).all()
    ages = frame.groupby("pid").age.first().sort_index().to_numpy()
    np.testing.assert_allclose(idata.constant_data["covariates"].sel(covariate="age").values, ages, rtol=1e-5)
    cells = sum(np.nan_to_num(idata.log_likelihood[f"y_{k}"].values) for k in OUTCOMES).sum(-1)
    np.testing.assert_allclose(idata.log_likelihood["y"].values, cells, rtol=1e-5)


def test_loo_waic_summary_and_ppc_run(fitted):
    *_, idata = fitted
    single = to_inference_data(fitted[2], fitted[1].schema_)
    assert list(single.log_likelihood.data_vars) == ["y"]
    with warnings.catch_warnings():
        # high Pareto k / WAIC variance warnings are expected (see convert's docstring)
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(single)
        waic = az.waic(single)
        by_name = az.loo(idata, var_name="y", pointwise=True)
    assert np.isfinite(loo.elpd_loo) and np.isfinite(waic.elpd_waic)
    assert by_name.pareto_k.dims == ("subject",)
    summary = az.summary(idata, var_names=["b"], kind="stats")
    assert len(summary) == 20 * fitted[1].latent_dim_
    with warnings.catch_warnings():
        # arviz 0.23 calls a matplotlib API deprecated in matplotlib 3.11
        warnings.filterwarnings("ignore", message="Passing a dict or None as alias_mapping")
        axes = az.plot_ppc(idata, var_names=["y_g"], num_pp_samples=20)
    assert axes is not None
    matplotlib.pyplot.close("all")


def test_netcdf_round_trip(fitted, tmp_path):
    *_, idata = fitted
    path = tmp_path / "dgmm.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        assert back[group].equals(idata[group]), group
        assert back[group].attrs["posterior_method"] == "importance"
    assert back.posterior.subject.values.tolist() == idata.posterior.subject.values.tolist()
