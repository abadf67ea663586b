"""The Smooth Noise Sampler (Eq. 5 inside DDIM, ComfyUI's sigma space) against references
written here: plain Euler loops, a float64 loop with Eq. 5 per frame and DDIM in VP form,
and the VP-space `sample.ddim_sample` of the core."""

import math

import pytest
import torch

from references import FLOAT32_EPS, ref_c
from smooth_core import sample, schedule
from smooth_core.ksampling import sample_smooth_ddim
from smooth_core.sample import SmoothNoise

FRAMES, CHANNELS, SIDE = 5, 4, 3

# ---------------------------------------------------------------- references (float64, loops)




def ref_euler(model, x, sigmas):
    """k-diffusion's Euler (= ComfyUI's "ddim" sampler), written out."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def ref_smooth_ddim(model, x, sigmas, lambda1, lambda3, active):
    """DDIM (eta 0) in variance-preserving form with Eq. 5 frame by frame, floats throughout."""
    x = x.clone()
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        a_t, a_prev = 1.0 / (1.0 + s * s), 1.0 / (1.0 + s_next * s_next)
        eps = (x - model(x, torch.full((x.shape[0],), s, dtype=x.dtype))) / s
        x_vp = x * math.sqrt(a_t)
        if active[i]:
            c = ref_c(a_t, a_prev)
            corrected = eps.clone()
            for n in range(x.shape[0] - 1):
                d_eps = eps[n] - eps[n + 1]
                d_x = x_vp[n] - x_vp[n + 1]
                corrected[n] = eps[n] - lambda3 * (d_eps - c / lambda1 * d_x)
            eps = corrected
        x0 = (x_vp - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        x_prev_vp = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        x = x_prev_vp / math.sqrt(a_prev)
    return x


class LinearDenoiser:
    """denoised = (A x) / sqrt(1 + sigma^2) + b per frame and pixel: analytic, counts its calls."""

    def __init__(self, dtype=torch.float64):
        g = torch.Generator().manual_seed(3)
        self.a = (torch.eye(CHANNELS) + 0.3 * torch.randn(CHANNELS, CHANNELS, generator=g)).to(dtype)
        self.b = torch.randn(CHANNELS, SIDE, SIDE, generator=g).to(dtype)
        self.calls = 0

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        assert sigma.shape == (x.shape[0],)
        scale = (1.0 + sigma.view(-1, 1, 1, 1) ** 2) ** -0.5
        return torch.einsum("ij,fjhw->fihw", self.a, x) * scale + self.b


def uniform_sigmas(steps, dtype=torch.float64):
    """ComfyUI's ddim_uniform levels (timesteps 1 + k * 1000 // steps), then 0."""
    acp = schedule.sd15_alphas_cumprod()
    t = sample.ddim_timesteps(steps)
    return torch.cat([schedule.alpha_bar_to_sigma(acp[t]), torch.zeros(1, dtype=torch.float64)]).to(dtype)


def start_noise(sigmas, frames=FRAMES, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(frames, CHANNELS, SIDE, SIDE, generator=g, dtype=torch.float64) * sigmas[0].item()).to(dtype)


# ---------------------------------------------------------------- without the correction


@pytest.mark.parametrize("smooth", [None, SmoothNoise(lambda3=0.0)])
def test_without_correction_it_is_stock_ddim_exactly(smooth):
    """smooth None or lambda3 = 0: bit for bit ComfyUI's "ddim" (Euler) in float32."""
    sigmas = uniform_sigmas(6, torch.float32)
    x = start_noise(sigmas, dtype=torch.float32)
    model = LinearDenoiser(torch.float32)
    out = sample_smooth_ddim(model, x, sigmas, smooth=smooth, disable=True)
    assert torch.equal(out, ref_euler(model, x, sigmas))


def test_lambda3_zero_allows_one_frame():
    sigmas = uniform_sigmas(3)
    x = start_noise(sigmas, frames=1)
    model = LinearDenoiser()
    out = sample_smooth_ddim(model, x, sigmas, smooth=SmoothNoise(lambda3=0.0), disable=True)
    assert torch.equal(out, ref_euler(model, x, sigmas))


# ---------------------------------------------------------------- Eq. 5 against the references


@pytest.mark.parametrize("steps", [1, 4, 10])
@pytest.mark.parametrize("lambda1, lambda3", [(1000.0, 0.5), (250.0, 1.0), (1000.0, 0.1)])
def test_matches_float64_reference_with_eq5_per_frame(steps, lambda1, lambda3):
    sigmas = uniform_sigmas(steps)
    x = start_noise(sigmas)
    model = LinearDenoiser()
    smooth = SmoothNoise(lambda1=lambda1, lambda3=lambda3)
    out = sample_smooth_ddim(model, x, sigmas, smooth=smooth, disable=True)
    ref = ref_smooth_ddim(model, x, sigmas, lambda1, lambda3, [True] * steps)
    assert out.dtype == torch.float64
    assert torch.allclose(out, ref, rtol=1e-10, atol=1e-10)
    # the correction changes the result (or the test would not see a wrong C)
    assert (out - ref_euler(model, x, sigmas)).abs().max() > 1e-3


def test_float32_stays_close_to_the_float64_reference():
    """C is computed in float64 even when the sampler runs in float32."""
    sigmas = uniform_sigmas(8)
    x = start_noise(sigmas)
    ref = ref_smooth_ddim(LinearDenoiser(), x, sigmas, 1000.0, 0.5, [True] * 8)
    out = sample_smooth_ddim(LinearDenoiser(torch.float32), x.float(), sigmas.float(), smooth=SmoothNoise(), disable=True)
    assert out.dtype == torch.float32
    # float32 latents up to |x| ~ 25: 8 steps of ~4 roundings each, <= ~32 eps of the largest value.
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=32 * FLOAT32_EPS * ref.abs().max().item())


@pytest.mark.parametrize("start, end", [(0.0, 0.5), (0.5, 1.0), (0.25, 0.75), (0.5, 0.5)])
def test_active_range_is_respected(start, end):
    steps = 8
    sigmas = uniform_sigmas(steps)
    x = start_noise(sigmas)
    model = LinearDenoiser()
    active = [start <= i / steps < end for i in range(steps)]
    out = sample_smooth_ddim(model, x, sigmas, smooth=SmoothNoise(start=start, end=end), disable=True)
    assert torch.allclose(out, ref_smooth_ddim(model, x, sigmas, 1000.0, 0.5, active), rtol=1e-10, atol=1e-10)
    if not any(active):
        assert torch.allclose(out, ref_euler(model, x, sigmas), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("smooth", [None, SmoothNoise(), SmoothNoise(start=0.3, end=0.8)])
def test_equals_the_vp_space_ddim_sampler_of_the_core(smooth):
    """DDIM in VP space (diffusers' schedule, final level alphas_cumprod[0]) is this sampler in
    x / sqrt(alpha_bar) coordinates, with the last sigma sqrt((1 - acp[0]) / acp[0]) instead of 0."""
    steps = 5
    acp = schedule.sd15_alphas_cumprod()
    timesteps, alpha_bars = sample.ddim_schedule(steps, acp)
    sigmas = schedule.alpha_bar_to_sigma(torch.tensor(alpha_bars, dtype=torch.float64))
    g = torch.Generator().manual_seed(5)
    mix = torch.eye(CHANNELS, dtype=torch.float64) + 0.2 * torch.randn(CHANNELS, CHANNELS, generator=g, dtype=torch.float64)

    def eps_fn(x_vp, t):  # (b, f, c, h, w), an integer timestep
        return torch.tanh(torch.einsum("ij,bfjhw->bfihw", mix, x_vp)) * (1.0 + t / 1000.0)

    def model(x, sigma):  # the same predictor seen as ComfyUI's denoiser
        s = sigma[0].item()
        t = timesteps[min(range(steps), key=lambda k: abs(sigmas[k].item() - s))]
        return x - s * eps_fn((x / math.sqrt(1.0 + s * s))[None], t)[0]

    noise_vp = torch.randn(1, FRAMES, CHANNELS, SIDE, SIDE, generator=g, dtype=torch.float64)
    expected = sample.ddim_sample(eps_fn, noise_vp, steps, acp, smooth=smooth)
    x = noise_vp[0] * math.sqrt(1.0 + sigmas[0].item() ** 2)
    out = sample_smooth_ddim(model, x, sigmas, smooth=smooth, disable=True)
    out_vp = out / math.sqrt(1.0 + sigmas[-1].item() ** 2)
    assert torch.allclose(out_vp, expected[0], rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- errors and callback


@pytest.mark.parametrize("shape", [(1, CHANNELS, SIDE, SIDE), (2, CHANNELS, 2, SIDE, SIDE)])
def test_one_frame_or_a_video_latent_is_refused_before_any_model_call(shape):
    sigmas = uniform_sigmas(3)
    model = LinearDenoiser()
    with pytest.raises(ValueError, match="needs at least 2 frames"):
        sample_smooth_ddim(model, torch.zeros(shape, dtype=torch.float64), sigmas, smooth=SmoothNoise(), disable=True)
    assert model.calls == 0


def test_increasing_sigmas_are_refused_before_any_model_call():
    sigmas = uniform_sigmas(3).flip(0)
    model = LinearDenoiser()
    with pytest.raises(ValueError, match="decreasing sigmas"):
        sample_smooth_ddim(model, start_noise(sigmas), sigmas, smooth=SmoothNoise(), disable=True)
    assert model.calls == 0


def test_callback_reports_every_step_with_the_corrected_estimate():
    steps = 4
    sigmas = uniform_sigmas(steps)
    x = start_noise(sigmas)
    model = LinearDenoiser()
    seen = []
    out = sample_smooth_ddim(model, x, sigmas, callback=seen.append, smooth=SmoothNoise(start=0.5), disable=True)
    assert [info["i"] for info in seen] == list(range(steps))
    assert model.calls == steps
    for i, info in enumerate(seen):
        assert info["sigma"] == info["sigma_hat"] == sigmas[i]
        raw = model(info["x"], sigmas[i] * torch.ones(FRAMES, dtype=torch.float64))
        changed = (info["denoised"] - raw).abs().max().item()
        assert (changed > 1e-6) == (i >= steps // 2)
    # the last step goes to sigma 0, where x is the (corrected) denoised estimate
    assert torch.allclose(out, seen[-1]["denoised"], rtol=1e-12, atol=1e-12)


def test_the_loop_reads_the_device_only_for_its_final_check():
    """Meta tensors hold no values, so any read of them on the host fails: every step must run
    before the sampler looks at the latents once (a read at each step would make a GPU wait for
    each model call). The sigmas are read once before the loop, as ComfyUI hands them over."""
    sigmas = uniform_sigmas(4)
    calls = []

    def model(x, sigma, **_):
        calls.append(sigma)
        return x * 0.3

    x = torch.empty(FRAMES, CHANNELS, SIDE, SIDE, device="meta", dtype=torch.float64)
    with pytest.raises(RuntimeError, match="meta"):
        sample_smooth_ddim(model, x, sigmas, smooth=SmoothNoise(), disable=True)
    assert len(calls) == 4


def test_a_prediction_gone_nan_is_refused_after_the_sampling():
    sigmas = uniform_sigmas(4)
    model = LinearDenoiser()

    def nan_at_the_second_step(x, sigma, **extra):
        denoised = model(x, sigma, **extra)
        return denoised * float("nan") if model.calls == 2 else denoised

    with pytest.raises(ValueError, match="sampling ended in NaN or inf latents.*float32 or bf16"):
        sample_smooth_ddim(nan_at_the_second_step, start_noise(sigmas), sigmas, smooth=SmoothNoise(), disable=True)
    assert model.calls == 4


# ---------------------------------------------------------------- where a model call sits in the schedule


def test_schedule_step_places_calls_at_and_between_levels():
    from smooth_core.ksampling import schedule_step

    levels = [10.0, 4.0, 1.0, 0.0]
    assert schedule_step(levels, 10.0) == (0, 4.0)  # at a level: that step, to the next level
    assert schedule_step(levels, 4.0) == (1, 1.0)
    assert schedule_step(levels, 1.0) == (2, 0.0)
    assert schedule_step(levels, 4.0 * (1 + 1e-7)) == (1, 1.0)  # a rounding away from a level is that level
    assert schedule_step(levels, 2.5) == (1, 1.0)  # a midpoint (Heun, DPM++ 2S) belongs to its step
    assert schedule_step(levels, 12.0) == (0, 10.0)  # above the first level (Euler with churn): step 0
    assert schedule_step(levels, 0.0) is None  # at the last level no step is left
    assert schedule_step([10.0, 4.0], 3.0) is None  # below a schedule that ends above 0


def test_correct_denoised_is_eq5_on_the_recovered_noise():
    """x - sigma * corrected eps, with eps = (x - denoised) / sigma, against the float64 loop."""
    from smooth_core.ksampling import correct_denoised

    g = torch.Generator().manual_seed(5)
    x = torch.randn(FRAMES, CHANNELS, SIDE, SIDE, generator=g, dtype=torch.float64) * 3
    denoised = torch.randn(FRAMES, CHANNELS, SIDE, SIDE, generator=g, dtype=torch.float64)
    sigma, sigma_next = 2.5, 1.2
    a_t, a_prev = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    eps = (x - denoised) / sigma
    x_vp = x * math.sqrt(a_t)
    c = ref_c(a_t, a_prev)
    expected = eps.clone()
    for n in range(FRAMES - 1):
        expected[n] = eps[n] - 0.5 * ((eps[n] - eps[n + 1]) - c / 1000.0 * (x_vp[n] - x_vp[n + 1]))
    out = correct_denoised(x, denoised, sigma, sigma_next, SmoothNoise())
    assert torch.allclose(out, x - sigma * expected, rtol=0, atol=1e-12)
