"""Large-steps parameterisation: the sparse solve, its gradient, the uniform Adam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import icosphere

from backend.fit.large_steps import AdamUniform, SmoothSystem, laplacian_entries


def dense(rows, cols, values, n) -> np.ndarray:
    out = np.zeros((n, n))
    np.add.at(out, (rows, cols), values)
    return out


@pytest.mark.parametrize("kind", ["uniform", "cotangent"])
def test_laplacian_is_symmetric_semidefinite_with_zero_row_sums(kind):
    v, f = icosphere(2)
    L = dense(*laplacian_entries(f, len(v), kind, vertices=v), len(v))
    np.testing.assert_allclose(L, L.T, atol=1e-12)
    np.testing.assert_allclose(L.sum(axis=1), 0, atol=1e-9)
    assert np.linalg.eigvalsh(L).min() > -1e-9


@pytest.mark.parametrize("kind", ["uniform", "cotangent"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_solve_matches_a_dense_solve(kind, dtype):
    v, f = icosphere(2)
    system = SmoothSystem.build(f, len(v), lam=19.0, kind=kind, vertices=v, dtype=dtype)
    A = np.eye(len(v)) + 19.0 * dense(*laplacian_entries(f, len(v), kind, vertices=v), len(v))
    u = torch.randn(len(v), 3, dtype=dtype, generator=torch.Generator().manual_seed(0))
    expected = np.linalg.solve(A, u.double().numpy())
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(system.from_differential(u).double().numpy(), expected,
                               atol=tol * np.abs(expected).max())
    np.testing.assert_allclose(system.to_differential(torch.tensor(expected, dtype=dtype))
                               .double().numpy(), u.double().numpy(), atol=100 * tol)


def test_gradient_through_the_solve():
    v, f = icosphere(1)
    system = SmoothSystem.build(f, len(v), lam=5.0, dtype=torch.float64)
    u = system.to_differential(v).requires_grad_()
    assert torch.autograd.gradcheck(system.from_differential, (u,))
    weights = torch.randn(len(v), 3, dtype=torch.float64)
    (system.from_differential(u) * weights).sum().backward()
    A = np.eye(len(v)) + 5.0 * dense(*laplacian_entries(f, len(v)), len(v))
    np.testing.assert_allclose(u.grad.numpy(), np.linalg.solve(A.T, weights.numpy()), atol=1e-10)


def test_float32_coordinates_through_a_float64_factor():
    v, f = icosphere(1)
    system = SmoothSystem.build(f, len(v), dtype=torch.float64)
    u = torch.randn(len(v), 3, requires_grad=True)
    out = system.from_differential(u)
    out.sum().backward()
    assert out.dtype == u.grad.dtype == torch.float32


def test_a_system_refuses_another_topology():
    v, f = icosphere(1)
    system = SmoothSystem.build(f, len(v))
    v2, f2 = icosphere(2)
    with pytest.raises(ValueError, match="rebuild the system"):
        system.from_differential(torch.zeros(len(v2), 3))
    assert SmoothSystem.build(f2, len(v2)).from_differential(torch.zeros(len(v2), 3)).shape == (
        len(v2), 3)


def test_bad_settings_are_refused():
    v, f = icosphere(0)
    with pytest.raises(ValueError, match="lambda"):
        SmoothSystem.build(f, len(v), lam=0.0)
    with pytest.raises(ValueError, match="needs the vertices"):
        SmoothSystem.build(f, len(v), kind="cotangent")
    with pytest.raises(ValueError, match="unknown Laplacian"):
        SmoothSystem.build(f, len(v), kind="graph")


def test_adam_uniform_scales_every_entry_by_the_largest_second_moment():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    opt = AdamUniform([p], lr=0.1, betas=(0.9, 0.999), eps=0.0)
    grad = torch.tensor([[1.0, -2.0], [0.5, 0.0], [4.0, 1.0]])
    p.grad = grad.clone()
    opt.step()
    # Step 1: m_hat = g, v_hat = g^2, so the update is lr * g / max|g|.
    torch.testing.assert_close(p.detach(), -0.1 * grad / 4.0)
    assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}


def test_large_steps_smooth_a_noisy_gradient_step():
    """A step on u spreads a one-vertex gradient over its neighbourhood."""
    v, f = icosphere(2)
    system = SmoothSystem.build(f, len(v), lam=19.0, dtype=torch.float64)
    u = system.to_differential(v).requires_grad_()
    (system.from_differential(u)[0] * torch.tensor([1.0, 0, 0], dtype=torch.float64)).sum(
        ).backward()
    moved = system.from_differential(u.detach() - u.grad) - v
    assert int((moved.norm(dim=1) > 1e-3 * moved.norm(dim=1).max()).sum()) > 10


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cuda_solve_matches_the_cpu():
    v, f = icosphere(2)
    u = torch.randn(len(v), 3)
    cpu = SmoothSystem.build(f, len(v)).from_differential(u)
    gpu = SmoothSystem.build(f, len(v), device="cuda").from_differential(u.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-4)
