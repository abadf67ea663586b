"""The paper's math (Eq. 2-6) against float64 brute-force references written here."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from references import FLOAT32_EPS, ref_alphas_cumprod, ref_c, ref_eq5
from smooth_core import correction, losses, metrics, schedule

# ---------------------------------------------------------------- references (float64, loops)






def ref_smooth_loss(eps, x, c, lambda1, variant, reduction):
    b, f = eps.shape[:2]
    terms = []
    for i in range(b):
        scale = c[i].item() / lambda1
        for n in range(f):
            if variant in ("native", "simple_first"):
                if n + 1 >= f:
                    continue
                de, dx = eps[i, n] - eps[i, n + 1], x[i, n] - x[i, n + 1]
            else:
                if n == 0 or n == f - 1:
                    continue
                de = 2 * eps[i, n] - eps[i, n - 1] - eps[i, n + 1]
                dx = 2 * x[i, n] - x[i, n - 1] - x[i, n + 1]
            r = de - scale * dx if variant in ("native", "cross_frame") else de
            terms.append(r.abs() if reduction == "l1" else r * r)
    return torch.stack(terms).mean()




def ref_vl(video, k):
    f, c, H, W = video.shape
    h, w, half = H - k, W - k, k // 2
    total = 0.0
    for n in range(1, f):
        cur = video[n, :, half : half + h, half : half + w].flatten()
        best = -2.0
        for i, j in itertools.product(range(k + 1), range(k + 1)):
            win = video[n - 1, :, i : i + h, j : j + w].flatten()
            best = max(best, (cur @ win / (cur.norm() * win.norm())).item())
        total += best
    return total / (f - 1)


# ---------------------------------------------------------------- schedule and C (Eq. 2)


def test_alphas_cumprod_matches_scaled_linear_reference():
    ours = schedule.sd15_alphas_cumprod()
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    assert torch.allclose(ours, torch.tensor(ref_alphas_cumprod(), dtype=torch.float64), rtol=0, atol=1e-14)


@pytest.mark.parametrize("t, magnitude", [(1, 82.36), (100, 468.13), (999, 164.78)])
def test_c_coefficient_hand_values(t, magnitude):
    acp = ref_alphas_cumprod()
    expected = ref_c(acp[t], acp[t - 1])
    got = schedule.c_coefficient(torch.tensor(acp[t], dtype=torch.float64), torch.tensor(acp[t - 1], dtype=torch.float64))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert got.item() == pytest.approx(-magnitude, abs=0.01)


def test_c_at_t0_uses_alpha_bar_prev_one():
    acp = ref_alphas_cumprod()
    # a_prev = 1: C = sqrt(a0) / (0 - sqrt(1 - a0))
    expected = -math.sqrt(acp[0]) / math.sqrt(1 - acp[0])
    got = schedule.c_for_timesteps(torch.tensor([0, 1]), schedule.sd15_alphas_cumprod())
    assert got[0].item() == pytest.approx(expected, rel=1e-12)
    assert got[1].item() == pytest.approx(ref_c(acp[1], acp[0]), rel=1e-12)


def test_c_half_inputs_are_computed_in_float32():
    acp = schedule.sd15_alphas_cumprod()
    c = schedule.c_coefficient(acp[999].half(), acp[998].half())
    assert c.dtype == torch.float32


def test_sigma_alpha_bar_round_trip():
    acp = schedule.sd15_alphas_cumprod()
    sigma = schedule.alpha_bar_to_sigma(acp)
    assert torch.allclose(sigma, ((1 - acp) / acp).sqrt(), rtol=1e-14)
    assert torch.allclose(schedule.sigma_to_alpha_bar(sigma), acp, rtol=1e-13)
    assert schedule.alpha_bar_to_sigma(torch.tensor(1.0, dtype=torch.float64)).item() == 0.0


# ---------------------------------------------------------------- smooth losses (Eq. 3)


@pytest.mark.parametrize("variant", losses.VARIANTS)
@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
def test_smooth_loss_matches_brute_force(variant, reduction):
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(2, 5, 3, 4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(2, 5, 3, 4, 4, generator=g, dtype=torch.float64)
    c = torch.tensor([-82.0, -468.0], dtype=torch.float64)
    got = losses.smooth_loss(eps, x, c, lambda1=1000.0, variant=variant, reduction=reduction)
    assert got.dim() == 0
    assert got.item() == pytest.approx(ref_smooth_loss(eps, x, c, 1000.0, variant, reduction).item(), rel=1e-12)


def test_smooth_loss_uses_each_videos_own_c():
    g = torch.Generator().manual_seed(1)
    eps = torch.randn(2, 4, 2, 3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(2, 4, 2, 3, 3, generator=g, dtype=torch.float64)
    both = losses.smooth_loss(eps, x, torch.tensor([-50.0, -400.0], dtype=torch.float64))
    first = losses.smooth_loss(eps[:1], x[:1], torch.tensor([-50.0], dtype=torch.float64))
    second = losses.smooth_loss(eps[1:], x[1:], torch.tensor([-400.0], dtype=torch.float64))
    assert both.item() == pytest.approx((first.item() + second.item()) / 2, rel=1e-12)


@given(c=st.floats(-1000, -1), seed=st.integers(0, 2**16))
@settings(max_examples=30, deadline=None)
def test_smooth_loss_zero_when_eps_is_scaled_latent(c, seed):
    x = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ct = torch.tensor([c], dtype=torch.float64)
    eps = (c / 1000.0) * x
    for variant in ("cross_frame", "native"):
        assert losses.smooth_loss(eps, x, ct, variant=variant).item() < 1e-12


@given(seed=st.integers(0, 2**16))
@settings(max_examples=20, deadline=None)
def test_simple_losses_zero_for_frame_constant_eps(seed):
    g = torch.Generator().manual_seed(seed)
    frame = torch.randn(1, 1, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = frame.expand(1, 5, 2, 3, 3)
    x = torch.randn(1, 5, 2, 3, 3, generator=g, dtype=torch.float64)
    for variant in ("simple", "simple_first"):
        assert losses.smooth_loss(eps, x, torch.tensor([-100.0], dtype=torch.float64), variant=variant).item() == 0.0


def test_smooth_loss_half_inputs_computed_in_float32():
    g = torch.Generator().manual_seed(2)
    eps = torch.randn(1, 4, 2, 3, 3, generator=g)
    x = torch.randn(1, 4, 2, 3, 3, generator=g)
    c = torch.tensor([-300.0])
    half = losses.smooth_loss(eps.half(), x.half(), c)
    assert half.dtype == torch.float32
    ref = ref_smooth_loss(eps.half().double(), x.half().double(), c.double(), 1000.0, "cross_frame", "l1")
    # float32: ~6 roundings per residual (on operands ~2x its size), then a 36-term mean: <= ~24 eps.
    assert half.item() == pytest.approx(ref.item(), rel=32 * FLOAT32_EPS)


@pytest.mark.parametrize("variant, frames", [("cross_frame", 2), ("simple", 2), ("native", 1), ("simple_first", 1)])
def test_smooth_loss_too_few_frames(variant, frames):
    eps = torch.zeros(1, frames, 4, 8, 8)
    with pytest.raises(ValueError, match="needs at least"):
        losses.smooth_loss(eps, eps, torch.tensor([-1.0]), variant=variant)


def test_smooth_loss_bad_inputs():
    eps = torch.zeros(1, 4, 4, 8, 8)
    with pytest.raises(ValueError, match="same shape"):
        losses.smooth_loss(eps, torch.zeros(1, 4, 4, 8, 4), torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="one value per video"):
        losses.smooth_loss(eps, eps, torch.tensor([-1.0, -2.0]))
    with pytest.raises(ValueError, match="NaN or inf"):
        losses.smooth_loss(eps.clone().fill_(float("nan")), eps, torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="unknown smooth loss variant"):
        losses.smooth_loss(eps, eps, torch.tensor([-1.0]), variant="temporal")
    with pytest.raises(ValueError, match="unknown reduction"):
        losses.smooth_loss(eps, eps, torch.tensor([-1.0]), reduction="huber")
    with pytest.raises(ValueError, match="frames, channels"):
        losses.smooth_loss(eps[0], eps[0], torch.tensor([-1.0]))


def test_total_loss_is_mse_plus_weighted_smooth():
    g = torch.Generator().manual_seed(3)
    eps, noise, x = (torch.randn(1, 4, 2, 3, 3, generator=g) for _ in range(3))
    c = torch.tensor([-200.0])
    total, mse, smooth = losses.total_loss(eps, noise, x, c, lambda2=0.2)
    # float32 vs float64: a difference, a square and a 72-term mean summed in 8 lanes: <= ~8 eps.
    assert mse.item() == pytest.approx(((eps.double() - noise.double()) ** 2).mean().item(), rel=16 * FLOAT32_EPS)
    # float32: ~6 roundings per residual (on operands ~2x its size), then a 36-term mean: <= ~24 eps.
    assert smooth.item() == pytest.approx(ref_smooth_loss(eps.double(), x.double(), c.double(), 1000.0, "cross_frame", "l1").item(), rel=32 * FLOAT32_EPS)
    assert total.item() == pytest.approx(mse.item() + 0.2 * smooth.item(), rel=2 * FLOAT32_EPS)  # float32: <= 2 roundings
    baseline, _, _ = losses.total_loss(eps, noise, x, c, lambda2=0.0)
    assert baseline.item() == mse.item()  # lambda2 = 0: the MSE itself, the same float32 reduction


def test_baseline_total_loss_backpropagates_only_the_mse_but_still_reports_the_smooth_term():
    """lambda2 = 0 is Tune-A-Video: its gradient is the MSE's, 2 (eps - noise) / N, with no
    backward pass through the smooth term, whose value is still there for the loss curve."""
    g = torch.Generator().manual_seed(3)
    eps, noise, x = (torch.randn(1, 4, 2, 3, 3, generator=g) for _ in range(3))
    eps.requires_grad_(True)
    c = torch.tensor([-200.0])
    total, mse, smooth = losses.total_loss(eps, noise, x, c, lambda2=0.0)
    assert not smooth.requires_grad
    # float32: ~6 roundings per residual (on operands ~2x its size), then a 36-term mean: <= ~24 eps.
    assert smooth.item() == pytest.approx(ref_smooth_loss(eps.detach().double(), x.double(), c.double(), 1000.0, "cross_frame", "l1").item(), rel=32 * FLOAT32_EPS)
    total.backward()
    expected = 2 * (eps.detach().double() - noise.double()) / eps.numel()
    # float32 gradient, 2/N * (eps - noise): 3 roundings of eps/2 each, elementwise.
    torch.testing.assert_close(eps.grad.double(), expected, rtol=4 * FLOAT32_EPS, atol=0)


# ---------------------------------------------------------------- Eq. 5


def test_correct_noise_matches_per_frame_reference():
    g = torch.Generator().manual_seed(4)
    eps = torch.randn(2, 6, 4, 5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(2, 6, 4, 5, 5, generator=g, dtype=torch.float64)
    c = torch.tensor([-82.0, -165.0], dtype=torch.float64)
    got = correction.correct_noise(eps, x, c, lambda1=1000.0, lambda3=0.5)
    assert torch.allclose(got, ref_eq5(eps, x, c, 1000.0, 0.5), rtol=0, atol=1e-12)


@given(lambda3=st.floats(0, 2), seed=st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_correct_noise_keeps_last_frame_and_lambda3_zero_is_identity(lambda3, seed):
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(1, 4, 2, 3, 3, generator=g)
    x = torch.randn(1, 4, 2, 3, 3, generator=g)
    c = torch.tensor([-120.0])
    out = correction.correct_noise(eps, x, c, lambda3=lambda3)
    assert torch.equal(out[:, -1], eps[:, -1])
    assert torch.equal(correction.correct_noise(eps, x, c, lambda3=0.0), eps)


def test_correct_noise_keeps_dtype_and_rejects_bad_input():
    eps = torch.randn(1, 3, 4, 4, 4).half()
    out = correction.correct_noise(eps, eps, torch.tensor([-10.0]))
    assert out.dtype == torch.float16 and out.shape == eps.shape
    with pytest.raises(ValueError, match="needs at least 2 frames"):
        correction.correct_noise(eps[:, :1], eps[:, :1], torch.tensor([-10.0]))
    with pytest.raises(ValueError, match="lambda3"):
        correction.correct_noise(eps, eps, torch.tensor([-10.0]), lambda3=-1.0)
    with pytest.raises(ValueError, match="lambda3"):
        correction.correct_noise(eps, eps, torch.tensor([-10.0]), lambda3=float("nan"))


# ---------------------------------------------------------------- VL score (Eq. 6)


@pytest.mark.parametrize("k, size", [(8, 12), (2, 6), (0, 5), (3, 7)])
def test_vl_score_matches_brute_force(k, size):
    g = torch.Generator().manual_seed(5)
    video = torch.randn(2, 4, 3, size, size + 1, generator=g, dtype=torch.float64)
    got = metrics.vl_score(video, k=k)
    assert got.shape == (2,)
    for i in range(2):
        # float64: cosines <= 1 from <= 90-term dot products, rounding ~1e-14 (DESIGN asks 1e-6).
        assert got[i].item() == pytest.approx(ref_vl(video[i], k), abs=1e-10)
    single = metrics.vl_score(video[0], k=k)
    assert single.dim() == 0 and single.item() == pytest.approx(got[0].item(), abs=1e-12)


@given(seed=st.integers(0, 2**16), frames=st.integers(2, 6), data=st.data())
@settings(max_examples=25, deadline=None)
def test_vl_score_is_one_for_windows_sliding_over_one_latent(seed, frames, data):
    k, h = 4, 6
    big = torch.randn(3, h + 3 * k, h + 3 * k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    # frame n is the (h+k)^2 crop at a position that moves by at most k/2 per frame
    pos = [(k, k)]
    for _ in range(frames - 1):
        di = data.draw(st.integers(-k // 2, k // 2))
        dj = data.draw(st.integers(-k // 2, k // 2))
        pi, pj = pos[-1]
        pos.append((min(max(pi + di, 0), 2 * k), min(max(pj + dj, 0), 2 * k)))
    video = torch.stack([big[:, i : i + h + k, j : j + h + k] for i, j in pos])
    assert metrics.vl_score(video, k=k).item() == pytest.approx(1.0, abs=1e-9)


def test_shuffling_lowers_vl_score_but_not_clip_frame_score():
    g = torch.Generator().manual_seed(6)
    big = torch.randn(4, 80, 80, generator=g, dtype=torch.float64)
    smooth = torch.stack([big[:, 2 * n : 2 * n + 24, 3 * n : 3 * n + 24] for n in range(12)])
    order = torch.tensor([0, 6, 2, 9, 4, 11, 1, 7, 3, 10, 5, 8])
    shuffled = smooth[order]
    assert metrics.vl_score(shuffled).item() < metrics.vl_score(smooth).item() - 0.1
    embeds = torch.randn(12, 16, generator=g, dtype=torch.float64)
    assert metrics.clip_frame_consistency(embeds[order]).item() == pytest.approx(
        metrics.clip_frame_consistency(embeds).item(), abs=1e-12
    )


def test_vl_score_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 frames"):
        metrics.vl_score(torch.randn(1, 1, 4, 16, 16))
    with pytest.raises(ValueError, match="does not fit"):
        metrics.vl_score(torch.randn(1, 3, 4, 8, 16), k=8)
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.vl_score(torch.full((3, 4, 16, 16), float("inf")))


# ---------------------------------------------------------------- CLIP scores


def test_clip_scores_match_pairwise_reference():
    g = torch.Generator().manual_seed(7)
    embeds = torch.randn(5, 8, generator=g, dtype=torch.float64)
    text = torch.randn(8, generator=g, dtype=torch.float64)
    cos = lambda a, b: (a @ b / (a.norm() * b.norm())).item()  # noqa: E731
    pairs = [cos(embeds[i], embeds[j]) for i in range(5) for j in range(5) if i != j]
    assert metrics.clip_frame_consistency(embeds).item() == pytest.approx(sum(pairs) / len(pairs), rel=1e-12)
    expected_t = sum(100 * cos(embeds[i], text) for i in range(5)) / 5
    assert metrics.clip_text_alignment(embeds, text).item() == pytest.approx(expected_t, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 frames"):
        metrics.clip_frame_consistency(embeds[:1])
    with pytest.raises(ValueError, match="text_embed must have shape"):
        metrics.clip_text_alignment(embeds, text[:4])
