"""DDIM sampling (with Eq. 5) and DDIM inversion against float64 references written here.

References: diffusers' DDIMScheduler / DDIMInverseScheduler (eta 0) run on a float64 copy of
the schedule, and hand-written loops in Python floats with Eq. 5 written per frame.
"""

import math

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from references import FP16_EPS, ref_alphas_cumprod, ref_c, ref_eq5
from smooth_core import correction, invert, sample

SD15 = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)

# ---------------------------------------------------------------- references (float64, loops)




ACP = ref_alphas_cumprod()
ACP_T = torch.tensor(ACP, dtype=torch.float64)






def diffusers_scheduler(cls, num_steps):
    """A diffusers scheduler whose alphas are float64, so that it is a 1e-10 reference."""
    sched = cls(**SD15)
    sched.set_timesteps(num_steps)
    sched.alphas_cumprod = ACP_T.clone()
    if cls is DDIMScheduler:
        sched.final_alpha_cumprod = ACP_T[0]
    else:
        sched.initial_alpha_cumprod = ACP_T[0]
    return sched


def ref_sample_diffusers(eps_fn, noise, num_steps, smooth=None):
    """diffusers' DDIMScheduler.step (eta 0) with Eq. 5 on the post-CFG eps where active."""
    sched = diffusers_scheduler(DDIMScheduler, num_steps)
    ratio = 1000 // num_steps
    x = noise.clone()
    for i, t in enumerate(sched.timesteps.tolist()):
        eps = eps_fn(x, t)
        if smooth is not None and smooth.start <= i / num_steps < smooth.end:
            a_prev = ACP[t - ratio] if t - ratio >= 0 else ACP[0]
            eps = ref_eq5(eps, x, ref_c(ACP[t], a_prev), smooth.lambda1, smooth.lambda3)
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    return x


def ref_sample_loop(eps_fn, noise, num_steps, smooth=None):
    """DDIM eta 0 written out: prev = t - T // n, the final alpha alphas_cumprod[0] below 0."""
    ratio = 1000 // num_steps
    x = noise.clone()
    for i in range(num_steps):
        t = (num_steps - 1 - i) * ratio + 1
        a_t = ACP[t]
        a_prev = ACP[t - ratio] if t - ratio >= 0 else ACP[0]
        eps = eps_fn(x, t)
        if smooth is not None and smooth.start <= i / num_steps < smooth.end:
            eps = ref_eq5(eps, x, ref_c(a_t, a_prev), smooth.lambda1, smooth.lambda3)
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x


def ref_invert_loop(eps_fn, latents, num_steps):
    """Tune-A-Video's next_step: ascending t, eps at t, from alpha[t - T//n] (or final) to alpha[t]."""
    ratio = 1000 // num_steps
    x = latents.clone()
    for k in range(num_steps):
        t = k * ratio + 1
        a_cur = ACP[t - ratio] if t - ratio >= 0 else ACP[0]
        a_next = ACP[t]
        eps = eps_fn(x, t)
        x0 = (x - math.sqrt(1 - a_cur) * eps) / math.sqrt(a_cur)
        x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    return x


def ref_invert_diffusers(eps_fn, latents, num_steps):
    sched = diffusers_scheduler(DDIMInverseScheduler, num_steps)
    x = latents.clone()
    for t in sched.timesteps.tolist():
        x = sched.step(eps_fn(x, t), t, x).prev_sample
    return x


# ---------------------------------------------------------------- fixtures


def video(seed, shape=(2, 4, 3, 5, 6)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def nonlinear_predictor(seed=1, shape=(2, 4, 3, 5, 6)):
    """A smooth, nonlinear, frame-dependent eps(x, t), standing in for a UNet."""
    pattern = video(seed, shape)

    def eps_fn(x, t):
        s = math.sqrt(1.0 - ACP[t])
        return s * (0.5 * torch.tanh(x) + 0.3 * pattern) + 0.1 * math.cos(t / 150.0) * x

    return eps_fn


def exact_x0_predictor(x0):
    """The true eps for target x0: eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)."""
    return lambda x, t: (x - math.sqrt(ACP[t]) * x0) / math.sqrt(1.0 - ACP[t])


def close(a, b, tol=1e-10):
    return a.shape == b.shape and (a - b).abs().max().item() <= tol


# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 25, 50, 100, 333, 500, 501, 999])
def test_ddim_timesteps_equal_diffusers_leading_offset_one(n):
    sched = DDIMScheduler(**SD15)
    sched.set_timesteps(n)
    ours = sample.ddim_timesteps(n)
    assert ours.dtype == torch.int64
    assert torch.equal(ours, sched.timesteps)


def test_ddim_schedule_levels_end_at_the_final_alpha():
    timesteps, alpha_bars = sample.ddim_schedule(50)
    assert timesteps[0] == 981 and timesteps[-1] == 1 and len(alpha_bars) == 51
    expected = [ACP[t] for t in timesteps] + [ACP[0]]
    assert max(abs(a - b) for a, b in zip(alpha_bars, expected)) < 1e-15


# ---------------------------------------------------------------- sampling


def test_exact_x0_predictor_lands_on_its_closed_form():
    # With the true eps every x0_pred is x0 and eps stays the initial one, so the result is
    # sqrt(a_f) x0 + sqrt(1 - a_f) eps_0 at the final alpha a_f = alphas_cumprod[0].
    x0, noise = video(0), video(1)
    out = sample.ddim_sample(exact_x0_predictor(x0), noise, 50, alphas_cumprod=ACP_T)
    eps0 = (noise - math.sqrt(ACP[981]) * x0) / math.sqrt(1 - ACP[981])
    assert close(out, math.sqrt(ACP[0]) * x0 + math.sqrt(1 - ACP[0]) * eps0)


def test_exact_x0_predictor_lands_on_x0_when_the_final_alpha_is_one():
    x0, noise = video(0), video(1)
    acp = ACP_T.clone()
    acp[0] = 1.0  # set_alpha_to_one; t = 0 itself is never evaluated
    out = sample.ddim_sample(exact_x0_predictor(x0), noise, 50, alphas_cumprod=acp)
    assert close(out, x0)


@pytest.mark.parametrize("n", [1, 7, 50])
def test_sampler_equals_diffusers_ddim_step(n):
    eps_fn, noise = nonlinear_predictor(), video(2)
    out = sample.ddim_sample(eps_fn, noise, n)
    assert close(out, ref_sample_diffusers(eps_fn, noise, n))
    assert close(out, ref_sample_loop(eps_fn, noise, n))


@pytest.mark.parametrize(
    "n, smooth",
    [
        (50, sample.SmoothNoise()),
        (20, sample.SmoothNoise(lambda1=500.0, lambda3=0.8)),
        (20, sample.SmoothNoise(start=0.2, end=0.65)),
        (7, sample.SmoothNoise(start=0.5, end=1.0)),
        (600, sample.SmoothNoise(start=0.9, end=1.0)),  # step ratio 1: the last prev is t = 0
    ],
)
def test_sampler_with_eq5_equals_references(n, smooth):
    eps_fn, noise = nonlinear_predictor(), video(3)
    out = sample.ddim_sample(eps_fn, noise, n, smooth=smooth)
    assert close(out, ref_sample_loop(eps_fn, noise, n, smooth))
    if n <= 50:
        assert close(out, ref_sample_diffusers(eps_fn, noise, n, smooth))
    assert not close(out, sample.ddim_sample(eps_fn, noise, n), 1e-6)


def test_lambda3_zero_equals_no_correction():
    eps_fn, noise = nonlinear_predictor(), video(4)
    plain = sample.ddim_sample(eps_fn, noise, 20)
    off = sample.ddim_sample(eps_fn, noise, 20, smooth=sample.SmoothNoise(lambda3=0.0))
    assert torch.equal(off, plain)


def test_empty_active_range_equals_no_correction():
    eps_fn, noise = nonlinear_predictor(), video(4)
    plain = sample.ddim_sample(eps_fn, noise, 20)
    empty = sample.ddim_sample(eps_fn, noise, 20, smooth=sample.SmoothNoise(start=0.4, end=0.4))
    assert torch.equal(empty, plain)


def test_eq5_leaves_identical_frames_alone():
    # D(eps) = D(x) = 0 when every frame is the same video frame.
    frame = video(5, (2, 1, 3, 5, 6))
    noise = frame.expand(2, 4, 3, 5, 6).clone()
    eps_fn = lambda x, t: 0.4 * torch.sin(x) + 0.01 * t * x  # noqa: E731  (frame-independent)
    smoothed = sample.ddim_sample(eps_fn, noise, 30, smooth=sample.SmoothNoise())
    assert close(smoothed, sample.ddim_sample(eps_fn, noise, 30), 1e-12)


def test_active_range_selects_the_steps(monkeypatch):
    seen = []
    real = correction.correct_noise

    def spy(eps, x_t, c, lambda1, lambda3, **options):
        seen.append(c.clone())
        return real(eps, x_t, c, lambda1, lambda3, **options)

    monkeypatch.setattr(correction, "correct_noise", spy)
    sample.ddim_sample(nonlinear_predictor(), video(6), 10, smooth=sample.SmoothNoise(start=0.2, end=0.6))
    # steps 2..5 of 10: t = 701, 601, 501, 401, each with prev = t - 100; one C per video.
    expected = [ref_c(ACP[t], ACP[t - 100]) for t in (701, 601, 501, 401)]
    assert len(seen) == 4
    for c, ref in zip(seen, expected):
        assert c.shape == (2,) and c.dtype == torch.float64
        assert abs(c[0].item() - ref) <= 1e-9 * abs(ref) and c[0].item() == c[1].item()


def test_classifier_free_guidance():
    u, c = video(7), video(8)
    assert close(sample.classifier_free_guidance(u, c, 7.5), u + 7.5 * (c - u), 1e-12)
    assert close(sample.classifier_free_guidance(u, c, 1.0), c, 1e-12)
    assert torch.equal(sample.classifier_free_guidance(u, c, 0.0), u)


def test_half_precision_is_computed_in_float32_and_returned_in_half():
    dtypes = []
    base = nonlinear_predictor(shape=(1, 3, 2, 4, 4))

    def eps_fn(x, t):
        dtypes.append(x.dtype)
        return base(x.double(), t).half()

    noise = video(9, (1, 3, 2, 4, 4))
    kept = noise.half().clone()
    out = sample.ddim_sample(eps_fn, noise.half(), 10, smooth=sample.SmoothNoise())
    assert out.dtype == torch.float16 and set(dtypes) == {torch.float32}
    assert torch.equal(noise.half(), kept)
    exact = sample.ddim_sample(base, noise.half().double(), 10, smooth=sample.SmoothNoise())  # from the same start
    # fp16 predictions and result, float32 arithmetic: < 1 FP16_EPS of the largest value (fp16 arithmetic: ~1.5).
    assert (out.double() - exact).abs().max() < FP16_EPS * exact.abs().max()


# ---------------------------------------------------------------- inversion


@pytest.mark.parametrize("n", [1, 10, 50])
def test_inversion_equals_tune_a_video_and_diffusers_inverse(n):
    eps_fn, x0 = nonlinear_predictor(), video(10)
    out = invert.ddim_invert(eps_fn, x0, n)
    assert close(out, ref_invert_loop(eps_fn, x0, n))
    assert close(out, ref_invert_diffusers(eps_fn, x0, n))


@pytest.mark.parametrize("n", [1, 50, 999])
def test_inversion_then_sampling_is_exact_when_eps_does_not_depend_on_x(n):
    # Then every step is an affine map of x, and the sampler applies its exact inverse.
    pattern = video(11)
    eps_fn = lambda x, t: math.cos(t / 97.0) * pattern  # noqa: E731
    x0 = video(12)
    noise = invert.ddim_invert(eps_fn, x0, n)
    assert close(sample.ddim_sample(eps_fn, noise, n), x0)


def test_sampling_then_inversion_with_the_exact_x0_predictor_recovers_the_noise():
    # On the exact-x0 trajectory x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps_0 the prediction is
    # eps_0 at every step, so inverting with eps_0 must give back the starting noise. (The
    # exact-x0 predictor itself is not exact under inversion: there it is asked about the
    # next, noisier level while x is still at the cleaner one.)
    x0, noise = video(13), video(14)
    eps0 = (noise - math.sqrt(ACP[981]) * x0) / math.sqrt(1 - ACP[981])
    out = sample.ddim_sample(exact_x0_predictor(x0), noise, 50)
    back = invert.ddim_invert(lambda x, t: eps0, out, 50)
    assert close(back, noise)


def test_inversion_round_trip_error_is_first_order_in_the_step():
    # Inversion evaluates eps at the cleaner end of each interval, sampling at the noisier
    # end: the mismatch is O(h^2) per step, O(h) = O(1/n) overall. With this predictor
    # (Lipschitz ~0.6, latents ~N(0, 1)) the max error is ~0.19 at 50 steps, ~0.02 at 500.
    eps_fn, x0 = nonlinear_predictor(), video(15)

    def round_trip_error(n):
        back = sample.ddim_sample(eps_fn, invert.ddim_invert(eps_fn, x0, n), n)
        return (back - x0).abs().max().item()

    e50, e100, e500 = round_trip_error(50), round_trip_error(100), round_trip_error(500)
    assert e50 < 0.3 and e500 < 0.03
    assert 0.4 < e100 / e50 < 0.6


# ---------------------------------------------------------------- callbacks and cancel


class Cancelled(Exception):
    pass


@pytest.mark.parametrize("run", [sample.ddim_sample, invert.ddim_invert])
def test_callback_runs_after_every_step(run):
    calls = []
    out = run(nonlinear_predictor(), video(16), 12, callback=lambda i, n, x: calls.append((i, n, x.clone())))
    assert [(i, n) for i, n, _ in calls] == [(i, 12) for i in range(12)]
    assert torch.equal(calls[-1][2], out)


@pytest.mark.parametrize("run", [sample.ddim_sample, invert.ddim_invert])
def test_exception_from_callback_cancels(run):
    predictions = []
    base = nonlinear_predictor()

    def eps_fn(x, t):
        predictions.append(t)
        return base(x, t)

    def cancel(i, n, x):
        if i == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        run(eps_fn, video(17), 20, callback=cancel)
    assert len(predictions) == 3


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("num_steps", [0, -1, 1000, 2.5, True])
@pytest.mark.parametrize("run", [sample.ddim_sample, invert.ddim_invert])
def test_bad_num_steps_is_rejected(run, num_steps):
    with pytest.raises(ValueError, match="num_steps must be an integer from 1 to 999"):
        run(nonlinear_predictor(), video(18), num_steps)


@pytest.mark.parametrize("run", [sample.ddim_sample, invert.ddim_invert])
def test_non_video_latents_are_rejected(run):
    with pytest.raises(ValueError, match=r"shape \(batch, frames, channels, height, width\)"):
        run(lambda x, t: x, torch.zeros(4, 3, 5, 6), 10)


def test_single_frame_with_eq5_is_rejected_before_any_prediction():
    def eps_fn(x, t):
        raise AssertionError("predicted before checking the inputs")

    with pytest.raises(ValueError, match="noise correction .Eq. 5. needs at least 2 frames"):
        sample.ddim_sample(eps_fn, torch.zeros(1, 1, 4, 8, 8), 10, smooth=sample.SmoothNoise())
    assert sample.ddim_sample(lambda x, t: x, torch.zeros(1, 1, 4, 8, 8), 10).shape == (1, 1, 4, 8, 8)


@pytest.mark.parametrize("run", [sample.ddim_sample, invert.ddim_invert])
def test_wrong_prediction_shape_is_rejected(run):
    with pytest.raises(ValueError, match=r"eps_fn must return a noise prediction of shape \(2, 4, 3, 5, 6\)"):
        run(lambda x, t: x[:, :1], video(19), 10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(start=0.7, end=0.3), "0 <= start <= end <= 1"),
        (dict(end=1.5), "0 <= start <= end <= 1"),
        (dict(lambda3=-0.5), "lambda3 must be a finite number >= 0"),
        (dict(lambda1=0.0), "lambda1 must be a finite number > 0"),
    ],
)
def test_bad_smooth_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample.SmoothNoise(**kwargs)


@pytest.mark.parametrize("acp", [ACP_T.view(10, 100), torch.zeros(1000, dtype=torch.float64)])
def test_bad_alphas_cumprod_is_rejected(acp):
    with pytest.raises(ValueError, match="alphas_cumprod"):
        sample.ddim_sample(lambda x, t: x, video(20), 10, alphas_cumprod=acp)


def test_sampling_with_eq5_reads_the_device_only_for_its_final_check():
    """Meta tensors hold no values, so any read of them on the host fails: every step must run
    before the sampler looks at the latents once (a read at each step would make a GPU wait for
    each model call)."""
    calls = []

    def eps_fn(x, t):
        calls.append(t)
        return 0.5 * x

    noise = torch.empty(1, 3, 4, 8, 8, device="meta")
    with pytest.raises(RuntimeError, match="meta"):
        sample.ddim_sample(eps_fn, noise, 5, smooth=sample.SmoothNoise())
    assert len(calls) == 5


def test_a_prediction_gone_nan_is_refused_after_the_sampling():
    predictor, calls = nonlinear_predictor(), []

    def nan_at_the_second_step(x, t):
        calls.append(t)
        eps = predictor(x, t)
        return eps * float("nan") if len(calls) == 2 else eps

    with pytest.raises(ValueError, match="sampling ended in NaN or inf latents.*float32 or bf16"):
        sample.ddim_sample(nan_at_the_second_step, video(6), 4, smooth=sample.SmoothNoise())
    assert len(calls) == 4
