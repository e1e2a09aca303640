"""Conv/linear bounds against dense ground truth (unrolled matrices + SVD), in float64.

Truths used: the dense Jacobian of the real layer (torch.autograd.functional.jacobian),
the dense matrix of a circular convolution, the rfftn Fourier blocks, and eigvalsh.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from robaudit.bounds import conv, fourier, gram, opnorm, reshape
from robaudit.bounds.geometry import ConvGeometry

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")



def dense_sigma(module: nn.Module, shape: tuple[int, ...]) -> float:
    """σ_max of the bias-free layer on one sample of ``shape``: unrolled by autograd, then SVD."""
    w = module.weight.detach().double()

    def f(x: torch.Tensor) -> torch.Tensor:
        if isinstance(module, nn.Linear):
            return torch.nn.functional.linear(x, w)
        return module._conv_forward(x.unsqueeze(0), w, None).squeeze(0)

    jac = torch.autograd.functional.jacobian(f, torch.zeros(shape, dtype=torch.float64))
    return float(torch.linalg.svdvals(jac.reshape(-1, math.prod(shape)))[0])


def make(cls, *args, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return cls(*args, **kwargs).double()


CASES = {
    "3x3 pad1": (lambda: make(nn.Conv2d, 3, 4, 3, padding=1), (3, 6, 6)),
    "3x3 stride2": (lambda: make(nn.Conv2d, 3, 4, 3, padding=1, stride=2), (3, 6, 6)),
    "3x3 stride2 nopad": (lambda: make(nn.Conv2d, 3, 5, 3, stride=2), (3, 7, 7)),
    "3x3 dilation2": (lambda: make(nn.Conv2d, 3, 4, 3, padding=2, dilation=2), (3, 6, 6)),
    "groups2": (lambda: make(nn.Conv2d, 4, 6, 3, padding=1, groups=2), (4, 6, 6)),
    "depthwise": (lambda: make(nn.Conv2d, 3, 3, 3, padding=1, groups=3), (3, 6, 6)),
    "1x1": (lambda: make(nn.Conv2d, 3, 5, 1), (3, 6, 6)),
    "1x1 stride2": (lambda: make(nn.Conv2d, 3, 5, 1, stride=2), (3, 6, 6)),
    "7x7 pad3": (lambda: make(nn.Conv2d, 3, 2, 7, padding=3), (3, 6, 6)),
    "7x7 stride2": (lambda: make(nn.Conv2d, 3, 4, 7, padding=3, stride=2), (3, 6, 6)),
    "wide c_out": (lambda: make(nn.Conv2d, 3, 16, 3, padding=1), (3, 6, 6)),
    "wide c_in": (lambda: make(nn.Conv2d, 16, 3, 3, padding=1), (16, 6, 6)),
    "rect kernel same": (lambda: make(nn.Conv2d, 3, 4, (2, 3), padding="same"), (3, 6, 7)),
    "circular": (lambda: make(nn.Conv2d, 3, 4, 3, padding=1, padding_mode="circular"), (3, 6, 6)),
    "circular stride2": (lambda: make(nn.Conv2d, 3, 4, 3, padding=1, stride=2, padding_mode="circular"), (3, 6, 6)),
    "reflect": (lambda: make(nn.Conv2d, 3, 4, 3, padding=1, padding_mode="reflect"), (3, 6, 6)),
    "replicate": (lambda: make(nn.Conv2d, 3, 4, 3, padding=2, padding_mode="replicate"), (3, 6, 6)),
    "conv1d": (lambda: make(nn.Conv1d, 3, 4, 5, padding=2), (3, 12)),
    "conv1d stride2 dil2": (lambda: make(nn.Conv1d, 3, 4, 3, padding=1, stride=2, dilation=2), (3, 12)),
    "conv1d circular": (lambda: make(nn.Conv1d, 3, 4, 3, padding=1, padding_mode="circular"), (3, 12)),
    "conv1d circular stride2": (lambda: make(nn.Conv1d, 3, 4, 3, padding=1, stride=2, padding_mode="circular"),
                                (3, 12)),
    "reflect stride3": (lambda: make(nn.Conv2d, 3, 4, 3, padding=1, stride=3, padding_mode="reflect"), (3, 9, 9)),
    "stride (2,1)": (lambda: make(nn.Conv2d, 3, 4, 3, padding=1, stride=(2, 1)), (3, 6, 6)),
    "conv1d groups": (lambda: make(nn.Conv1d, 4, 4, 3, padding=1, groups=2), (4, 10)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    build, shape = CASES[request.param]
    module = build()
    bounds = conv.conv_bounds(module, shape, iters=300, tol=1e-10, seed=0)
    return request.param, module, shape, bounds, dense_sigma(module, shape)


def test_operator_norm_matches_dense(case):
    name, _, _, b, exact = case
    assert b.converged, name
    assert b.operator_norm == pytest.approx(exact, rel=1e-4)
    assert b.operator_norm <= exact * (1 + 1e-9)  # a lower bound


def test_upper_bounds_dominate_dense(case):
    name, _, _, b, exact = case
    for key in ("circular_exact", "circular_upper", "singla_bound", "gram_bound", "upper", "strided_exact"):
        if getattr(b, key) is not None:
            assert getattr(b, key) >= exact * (1 - 1e-10), (name, key)
    strided = [b.strided_exact] if b.strided_exact is not None else []
    assert b.upper == min([b.circular_upper, b.singla_bound, b.gram_bound] + strided)
    assert (b.strided_exact is not None) == ("stride" in name)


def test_bounds_dominate_circular_value(case):
    name, _, _, b, _ = case
    assert b.singla_bound >= b.circular_exact * (1 - 1e-10), name
    assert b.circular_upper >= b.circular_exact
    assert b.circular_exact <= b.gram_bound <= 1.01 * b.circular_exact, name
    for key in ("R", "S", "T", "U"):
        assert b.reshapes[key] >= b.circular_exact * (1 - 1e-10), (name, key)


def test_circular_padding_is_exact(case):
    name, module, _, b, exact = case
    if name in ("circular", "conv1d circular"):
        assert b.circular_is_exact
        assert b.circular_exact == pytest.approx(exact, rel=1e-10)
    elif name != "1x1":
        assert not b.circular_is_exact
    if name in ("circular stride2", "conv1d circular stride2"):  # polyphase: exact for strided circular layers
        assert b.strided_exact == pytest.approx(exact, rel=1e-8)
        assert b.strided_exact < b.circular_exact


def test_one_by_one_conv_is_its_matrix_norm():
    module = make(nn.Conv2d, 3, 5, 1)
    b = conv.conv_bounds(module, (3, 6, 6), iters=0, power=False)
    w = module.weight.detach().reshape(5, 3)
    exact = float(torch.linalg.svdvals(w)[0])
    assert b.circular_is_exact and b.circular_exact == pytest.approx(exact, rel=1e-12)
    assert b.singla_bound == pytest.approx(exact, rel=1e-9)
    assert dense_sigma(module, (3, 6, 6)) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("k,dil", [(3, 1), (5, 1), (3, 2)])
def test_circular_exact_is_sedghi_value_at_padded_size(k, dil):
    # The zero-padded layer's circular_exact is the circular convolution at n+2p: build that
    # convolution independently (circular 'same' padding on an (n+2p)-sized input) and unroll it.
    p = dil * (k - 1) // 2
    zero = make(nn.Conv2d, 3, 4, k, padding=p, dilation=dil, seed=k)
    circ = make(nn.Conv2d, 3, 4, k, padding=p, dilation=dil, padding_mode="circular", seed=k)
    circ.weight.data.copy_(zero.weight.data)
    n = 5
    b = conv.conv_bounds(zero, (3, n, n), power=False)
    assert b.fft_size == (n + 2 * p, n + 2 * p)
    assert b.circular_exact == pytest.approx(dense_sigma(circ, (3, n + 2 * p, n + 2 * p)), rel=1e-10)


def test_reflect_and_replicate_pad_factor_is_sqrt_max_copies():
    for mode, pad in (("reflect", 2), ("replicate", 2), ("zeros", 2), ("circular", 1)):
        module = make(nn.Conv2d, 2, 2, 3, padding=pad, padding_mode=mode)
        geom = ConvGeometry.of(module, (2, 5, 6))
        factor, _ = geom.pad_factor((3, 3))
        if mode == "circular":
            assert factor == 1.0
            continue
        ones = torch.ones(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
        padded = torch.nn.functional.pad(ones, (pad, pad, pad, pad), mode="constant" if mode == "zeros" else mode)
        (counts,) = torch.autograd.grad(padded.sum(), ones)
        assert factor == pytest.approx(math.sqrt(float(counts.max())), rel=1e-12), mode


def test_same_padding_geometry_is_asymmetric_like_torch():
    module = make(nn.Conv2d, 1, 1, (2, 4), padding="same", dilation=(1, 1))
    geom = ConvGeometry.of(module, (1, 6, 7))
    assert geom.pads == ((0, 1), (1, 2))
    assert geom.output_size((2, 4)) == (6, 7)


# ---------------------------------------------------------------------------
# Fourier blocks, block maxima, Gram iteration


@pytest.mark.parametrize("shape,size,dil,groups", [
    ((8, 4, 3, 3), (7, 9), (1, 1), 1),
    ((6, 8, 3, 3), (8, 8), (2, 1), 2),
    ((5, 3, 5), (11,), (1,), 1),
    ((4, 4, 1, 1), (5, 5), (1, 1), 1),
    ((6, 2, 7, 7), (10, 10), (1, 1), 3),
])
def test_gram_blocks_match_fft_blocks(shape, size, dil, groups):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = fourier.gram_blocks(w, size, dil, groups)
    g = fourier.fourier_blocks(w, size, dil, groups)  # rfftn of the dilated, zero-padded kernel
    assert torch.allclose(h, h.mH, atol=1e-12)
    sv_fft = torch.linalg.svdvals(g)[:, 0]
    sv_gram = torch.linalg.eigvalsh(h)[:, -1].clamp_min(0).sqrt()
    assert float(sv_gram.max()) == pytest.approx(float(sv_fft.max()), rel=1e-12)
    if h.shape[0] == g.shape[0]:  # same frequencies (up to conjugation): same sorted spectra
        assert torch.allclose(sv_gram.sort().values, sv_fft.sort().values, rtol=1e-10)


def _random_blocks(b: int, m: int, seed: int, dtype=torch.complex128) -> torch.Tensor:
    g = torch.randn(b, m, m, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    return g.mH @ g


@pytest.mark.parametrize("b,m,seed", [(50, 12, 0), (200, 20, 1), (9, 30, 2), (40, 3, 3), (30, 1, 4)])
def test_block_max_eig_is_exact(b, m, seed):
    h = _random_blocks(b, m, seed)
    truth = float(torch.linalg.eigvalsh(h)[:, -1].max())
    res = fourier.block_max_eig(h)
    assert res.value == pytest.approx(truth, rel=1e-12)
    assert res.certified_upper >= truth
    assert res.exact_blocks + res.certified_blocks == b


def test_block_max_eig_finds_a_hidden_maximum_and_ties():
    h = _random_blocks(120, 16, 5)
    # a block with a large top eigenvalue but a small proxy (Σλ²/Σλ) is ranked low; it must still win
    v = torch.randn(16, dtype=torch.complex128, generator=torch.Generator().manual_seed(6))
    v = v / v.norm()
    spike = 0.1 * torch.eye(16, dtype=torch.complex128) + 400.0 * torch.outer(v, v.conj())
    h[97] = spike
    h[13] = spike  # a tie
    truth = float(torch.linalg.eigvalsh(h)[:, -1].max())
    assert fourier.block_max_eig(h).value == pytest.approx(truth, rel=1e-12)
    zero = torch.zeros(20, 5, 5, dtype=torch.complex128)
    assert fourier.block_max_eig(zero).value == 0.0


@pytest.mark.parametrize("iters", [0, 1, 2, 3, 5, 12])
def test_gram_iteration_is_an_upper_bound_at_every_step(iters):
    h = _random_blocks(60, 24, 7)
    truth = math.sqrt(float(torch.linalg.eigvalsh(h)[:, -1].max()))
    res = gram.gram_iteration(h, iters=iters, tol=1e-9, probe=0)
    assert res.bound >= truth
    assert res.lower <= truth * (1 + 1e-12)
    if iters == 12:
        assert res.bound <= truth * (1 + 1e-6)


def test_gram_iteration_tolerance_bounds_the_overestimate():
    h = _random_blocks(80, 32, 8)
    truth = math.sqrt(float(torch.linalg.eigvalsh(h)[:, -1].max()))
    for tol in (1e-1, 1e-2, 1e-3):
        res = gram.gram_iteration(h, tol=tol)
        assert truth <= res.bound <= truth * (1 + tol) * (1 + 1e-9)
        assert res.lower <= truth * (1 + 1e-12)


def test_lanczos_and_spectral_norm_upper():
    a = torch.randn(3, 40, 70, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    exact = torch.linalg.svdvals(a)[:, 0]
    ritz = reshape.top_ritz(a @ a.mT, steps=20).sqrt()
    assert bool((ritz <= exact * (1 + 1e-12)).all())
    up = reshape.spectral_norm_upper(a, exact_below=8)  # force the Lanczos + Cholesky certificate path
    assert bool((up >= exact).all()) and bool((up <= exact * (1 + 1e-6)).all())
    small = reshape.spectral_norm_upper(a)
    assert bool((small >= exact).all()) and bool((small <= exact * (1 + 1e-9)).all())


def test_fantastic_four_reshapes_follow_the_paper():
    w = torch.randn(5, 3, 2, 4, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    k = w.numpy()
    c_out, c_in, h, wd = k.shape
    # Singla & Feizi, Sec. 1 numpy snippet (R); S, T, U by the same recipe
    r = np.linalg.norm(np.transpose(k, (0, 2, 1, 3)).reshape(h * c_out, -1), ord=2)
    s = np.linalg.norm(np.transpose(k, (0, 3, 1, 2)).reshape(wd * c_out, -1), ord=2)
    t = np.linalg.norm(k.reshape(c_out, -1), ord=2)
    u = np.linalg.norm(np.transpose(k, (1, 0, 2, 3)).reshape(c_in, -1), ord=2)
    four = reshape.fantastic_four(w)
    scale = math.sqrt(h * wd)
    for key, ref in (("R", r), ("S", s), ("T", t), ("U", u)):
        assert four[key] == pytest.approx(scale * ref, rel=1e-9)
    assert four["singla_bound"] == pytest.approx(scale * min(r, s, t, u), rel=1e-9)
    assert reshape.heuristic(w) == pytest.approx(t, rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_singla_theorem_holds_for_random_kernels(seed):
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(int(v) for v in torch.randint(1, 6, (4,), generator=gen))
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    n = int(torch.randint(1, 9, (1,), generator=gen))  # also smaller than the kernel: taps wrap
    circ = math.sqrt(fourier.block_max_eig(fourier.gram_blocks(w, (n, n))).value)
    four = reshape.fantastic_four(w)
    assert four["singla_bound"] >= circ * (1 - 1e-10)


def test_linear_operator_norm_and_exact():
    lin = make(nn.Linear, 30, 12)
    exact = float(torch.linalg.svdvals(lin.weight.detach())[0])
    assert conv.linear_norm(lin.weight.detach()) == pytest.approx(exact, rel=1e-12)
    (est,) = opnorm.operator_norms([opnorm.LinearMap(lin.weight.detach())], iters=200, tol=1e-12)
    assert est.converged and est.value == pytest.approx(exact, rel=1e-8)
    assert est.value <= exact * (1 + 1e-12)
    assert dense_sigma(lin, (30,)) == pytest.approx(exact, rel=1e-12)


def test_float32_circular_matches_naive_fft_svd():
    torch.manual_seed(11)
    w = torch.randn(32, 16, 3, 3, dtype=torch.float32)
    fft = torch.fft.rfft2(w, s=(12, 12))
    naive = float(torch.linalg.svdvals(fft.permute(2, 3, 0, 1).reshape(-1, 32, 16)).max())
    value, res = fourier.circular_norm(w, (12, 12))
    assert value == pytest.approx(naive, rel=1e-4)
    res_g = gram.gram_iteration(fourier.gram_blocks(w, (12, 12)))
    assert value * (1 - 1e-5) <= res_g.bound <= 1.01 * value


# ---------------------------------------------------------------------------
# conv→BatchNorm: the fused kernel's bound from the conv's own Gram blocks


@pytest.mark.parametrize("cin,cout,k,stride,dil,groups,pad,size", [
    (6, 6, 3, 1, 1, 1, 1, (9, 9)),     # square: output-side blocks, scaled
    (8, 4, 3, 1, 1, 1, 1, (8, 10)),    # c_out < c_in
    (4, 8, 3, 1, 1, 1, 1, (8, 8)),     # c_out > c_in: input side, recomputed
    (4, 8, 3, 2, 1, 1, 1, (11, 11)),   # strided: the polyphase kernel has 16 inputs, output side
    (8, 8, 1, 2, 1, 1, 0, (10, 10)),   # 1×1 downsampling
    (6, 6, 3, 1, 2, 2, 2, (9, 9)),     # groups and dilation
    (6, 6, 3, 1, 1, 3, 1, (7, 7)),
])
def test_fused_bound_from_the_unfused_blocks_equals_the_direct_one(cin, cout, k, stride, dil, groups, pad, size):
    """fused_tightest(w, s, geom, circular(w, geom)) is circular(S·w, geom).tightest, for any real s
    (negative BatchNorm gains included), and both bound the dense truth of the zero-padded layer."""
    gen = torch.Generator().manual_seed(cin * 100 + cout + stride)
    module = nn.Conv2d(cin, cout, k, stride=stride, dilation=dil, groups=groups, padding=pad, bias=False).double()
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=gen, dtype=torch.float64))
    scale = torch.randn(cout, generator=gen, dtype=torch.float64) * 3
    shape = (cin, *size)
    geom = ConvGeometry.of(module, shape)
    w = module.weight.detach()
    direct = conv.circular(w * scale.reshape(-1, 1, 1, 1), geom).tightest
    reused = conv.fused_tightest(w, scale, geom, conv.circular(w, geom))
    assert reused == pytest.approx(direct, rel=1e-12)
    assert conv.fused_tightest(w, scale, geom) == pytest.approx(direct, rel=1e-12)  # without the blocks
    fused = nn.Conv2d(cin, cout, k, stride=stride, dilation=dil, groups=groups, padding=pad, bias=False).double()
    with torch.no_grad():
        fused.weight.copy_(w * scale.reshape(-1, 1, 1, 1))
    assert dense_sigma(fused, shape) <= reused * (1 + 1e-12)



@pytest.mark.parametrize("cin,cout,k,stride,pad,size", [
    (4, 8, 3, 2, 1, (12, 12)),    # input side: the circular tournament would need a new autocorrelation
    (8, 8, 3, 2, 1, (11, 11)),    # output side, odd size: the polyphase canvas is larger than n + 2p
    (3, 8, 7, 2, 3, (16, 16)),    # a stem: 7×7, stride 2
    (8, 16, 1, 2, 0, (10, 10)),   # 1×1 downsampling
])
@pytest.mark.parametrize("spread", [0.01, 0.05, 0.3, 3.0])  # equal gains: the next test
def test_fused_strided_layer_skips_the_circular_tournament_only_when_it_cannot_matter(
        cin, cout, k, stride, pad, size, spread, monkeypatch):
    """A strided conv→BN pair: fused_tightest is still circular(S·w).tightest (the direct, full computation),
    whether or not the fused circular tournament is skipped. It is skipped only when the fused strided value is
    below the fused circular value, and with gains like a trained network's (spread up to 0.3) it is skipped for
    every 3×3 and 7×7 kernel here (min|s| × the conv's circular value, or one fused block's top eigenvalue, is
    already above the strided value)."""
    gen = torch.Generator().manual_seed(cin * 100 + cout + k)
    module = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False).double()
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=gen, dtype=torch.float64))
    scale = 1.0 + spread * torch.randn(cout, generator=gen, dtype=torch.float64)
    geom = ConvGeometry.of(module, (cin, *size))
    w = module.weight.detach()
    circ = conv.circular(w, geom)
    scaled = w * scale.reshape(-1, 1, 1, 1)
    direct = conv.circular(scaled, geom)
    calls = []
    real = conv.block_max_eig
    monkeypatch.setattr(conv, "block_max_eig", lambda h, **kw: calls.append(tuple(h.shape)) or real(h, **kw))
    reused = conv.fused_tightest(w, scale, geom, circ)
    assert reused == pytest.approx(direct.tightest, rel=1e-12)
    tournament = tuple(circ.blocks.shape) in calls  # the fused circular blocks have the conv's own blocks' shape
    if direct.strided.upper > direct.exact:  # the circular value is the smaller one: it must have been computed
        assert tournament
    if spread <= 0.3 and k > 1:  # a 1×1 kernel's strided value is its circular value: never below it
        assert not tournament, calls



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cin,cout,stride", [(6, 6, 1), (4, 8, 1), (4, 8, 2)])
def test_fused_bound_with_equal_gains_is_the_gain_times_the_unfused_bound(cin, cout, stride, dtype, monkeypatch):
    """Gains equal to within the certification gap (a fresh BatchNorm: 1/√(1+eps) on every channel): no
    tournament runs, and the value is the direct fused computation's to within that gap; gains that differ by
    more run it."""
    gen = torch.Generator().manual_seed(cin + cout + stride)
    module = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False).to(dtype)
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=gen, dtype=dtype))
    geom = ConvGeometry.of(module, (cin, 10, 10))
    w = module.weight.detach()
    circ = conv.circular(w, geom)
    gap = fourier.certification_gap(dtype)
    calls = []
    real = conv.block_max_eig
    monkeypatch.setattr(conv, "block_max_eig", lambda h, **kw: calls.append(h.shape) or real(h, **kw))
    fresh = torch.full((cout,), 1 / math.sqrt(1 + 1e-5), dtype=dtype) * (1 + 0.4 * gap * torch.rand(cout, generator=gen, dtype=dtype))
    value = conv.fused_tightest(w, fresh, geom, circ)
    assert not calls
    direct = conv.circular(w * fresh.reshape(-1, 1, 1, 1), geom).tightest
    assert direct <= value <= direct * (1 + 3 * gap)
    apart = fresh * (1 + 10 * gap * torch.linspace(0, 1, cout, dtype=dtype))
    conv.fused_tightest(w, apart, geom, circ)
    assert calls


def test_scale_blocks_is_the_gram_of_the_scaled_kernel():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(6, 3, 3, 3, generator=gen, dtype=torch.float64)  # groups 2: 3 out × 3 in per group
    s = torch.randn(6, generator=gen, dtype=torch.float64)
    assert fourier.output_side(3, 3)
    h = fourier.scale_blocks(fourier.gram_blocks(w, (7, 7), None, 2), s, 2)
    direct = fourier.gram_blocks(w * s.reshape(-1, 1, 1, 1), (7, 7), None, 2)
    assert torch.allclose(h, direct, rtol=1e-12, atol=1e-12)
