"""PackedAdam: the fit loop's optimiser, against torch.optim.Adam and clip_grad_norm_."""
import copy

import pytest
import torch

from pyro_dgmm.errors import ConfigError
from pyro_dgmm.optim import PackedAdam


def small_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def loss_of(net, x, y):
    return ((net(x) - y) ** 2).mean()


def test_matches_torch_adam_and_gradients_land_in_the_flat_buffer():
    net, reference = small_net(), small_net()
    optimizer = PackedAdam(net.parameters())
    torch_optimizer = torch.optim.Adam(reference.parameters(), lr=0.01)
    x, y = torch.randn(50, 3), torch.randn(50, 2)
    for _ in range(40):
        optimizer.zero_grad(), torch_optimizer.zero_grad()
        loss_of(net, x, y).backward(), loss_of(reference, x, y).backward()
        for p, q in zip(net.parameters(), reference.parameters()):
            assert p.grad.untyped_storage().data_ptr() == optimizer.grad.untyped_storage().data_ptr()
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
        optimizer.step(0.01), torch_optimizer.step()
    for p, q in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not torch.equal(net[0].weight, small_net()[0].weight)  # it did move


def test_backward_accumulates_and_zero_grad_clears():
    net = small_net()
    optimizer = PackedAdam(net.parameters())
    x, y = torch.randn(20, 3), torch.randn(20, 2)
    loss_of(net, x, y).backward()
    once = optimizer.grad.clone()
    loss_of(net, x, y).backward()
    torch.testing.assert_close(optimizer.grad, 2 * once)
    optimizer.zero_grad()
    assert all(p.grad.abs().sum() == 0 for p in net.parameters())


def test_per_element_rates_hold_masked_parameters_fixed():
    net = small_net()
    optimizer = PackedAdam(net.parameters())
    frozen = list(net[2].parameters())
    rates = 0.05 * optimizer.mask(frozen, 0.0, other=1.0)
    before = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(20, 3), torch.randn(20, 2)
    for _ in range(5):
        optimizer.zero_grad()
        loss_of(net, x, y).backward()
        optimizer.step(rates)
    moved = [not torch.equal(p, b) for p, b in zip(net.parameters(), before)]
    assert moved == [True, True, False, False]


def test_clipping_matches_torch():
    net, reference = small_net(), small_net()
    optimizer = PackedAdam(net.parameters())
    x, y = 10 * torch.randn(20, 3), torch.randn(20, 2)
    loss_of(net, x, y).backward(), loss_of(reference, x, y).backward()
    norm = optimizer.clip_grad_norm_(0.5)
    torch_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    torch.testing.assert_close(norm, torch_norm)
    assert norm > 0.5
    for p, q in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert float(torch.linalg.vector_norm(optimizer.grad)) == pytest.approx(0.5, rel=1e-4)


def test_state_dict_round_trip_keeps_parameters_packed():
    net = small_net()
    optimizer = PackedAdam(net.parameters())
    saved = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        optimizer.data.add_(1.0)
    net.load_state_dict(saved)
    torch.testing.assert_close(net[0].weight, small_net()[0].weight)
    optimizer.data.zero_()
    assert net[0].weight.abs().sum() == 0  # still a view of the buffer


def test_mixed_dtypes_and_foreign_parameters_are_refused():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="one dtype and device"):
        PackedAdam([a, b])
    optimizer = PackedAdam([a])
    with pytest.raises(ConfigError, match="does not hold"):
        optimizer.mask([torch.nn.Parameter(torch.zeros(2))])
