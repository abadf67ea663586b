"""One-shot tuning (Eq. 4) on a tiny inflated UNet: a hand-written reference step, resume
exactness, the frozen set, checkpoints and the errors a user meets."""

import contextlib
import math
import os

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from torch.overrides import TorchFunctionMode

from references import FLOAT32_EPS, TINY_UNET, ref_alphas_cumprod
from smooth_core import tune
from smooth_core.inflate import inflate_unet
from smooth_core.tune import NonFiniteLossError, TuneConfig, Tuner

TINY = dict(TINY_UNET, norm_num_groups=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model is bound by per-op overhead: extra threads only spin, and on a busy
    2-core machine they made this file five times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_weights():
    """The 2D model every test inflates: one set of base weights."""
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY).state_dict()


def video_unet_from(base_weights, temporal_seed=1):
    """A fresh inflation of the base weights. The new temporal layers are seeded, and their
    output projections made non-zero, so that every trainable tensor gets a gradient from
    the first step."""
    unet = UNet2DConditionModel(**TINY)
    unet.load_state_dict(base_weights)
    torch.manual_seed(temporal_seed)
    video_unet = inflate_unet(unet.eval())
    with torch.no_grad():
        for name, p in video_unet.unet.named_parameters():
            if ".attn_temp.to_out." in name:
                p.copy_(0.1 * torch.randn(p.shape))
    return video_unet


def toy_video(frames=5):
    """(1, f, 4, 8, 8): a smooth pattern shifting one pixel to the right per frame."""
    y, x = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    video = [
        torch.stack([torch.sin(0.8 * (x - n) + k) * torch.cos(0.5 * y + k) for k in range(4)]) for n in range(frames)
    ]
    return torch.stack(video)[None]


def text_embeds():
    return torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(1))


def trainables(video_unet):
    return {k: v.clone() for k, v in video_unet.trainable_state_dict().items()}


# ---------------------------------------------------------------- the reference step


def reference_step(video_unet, latents, context, config):
    """Eq. 4 by hand: the draws documented by Tuner (noise, then t, from a CPU generator),
    the SD1.5 schedule, C of Eq. 2 and the cross-frame smooth loss (Eq. 3) in float64
    loops, the clip and AdamW's first step. Returns (loss, updated trainables by name)."""
    b, f = latents.shape[:2]
    generator = torch.Generator().manual_seed(config.seed)
    noise = torch.randn(latents.shape, generator=generator)
    t = torch.randint(0, 1000, (b,), generator=generator)

    alpha_bar = ref_alphas_cumprod()
    x_t = torch.empty_like(latents)
    c = []
    for i in range(b):
        a = alpha_bar[t[i]]
        a_prev = alpha_bar[t[i] - 1] if t[i] > 0 else 1.0
        x_t[i] = math.sqrt(a) * latents[i] + math.sqrt(1 - a) * noise[i]
        c.append(math.sqrt(a) / (math.sqrt(a) * math.sqrt(1 - a_prev) - math.sqrt(a_prev) * math.sqrt(1 - a)))

    video_unet.mark_trainable()
    params = dict(video_unet.unet.named_parameters())
    names = list(video_unet.trainable_state_dict())
    eps = video_unet(x_t, t, context).double()
    x64 = x_t.double()
    mse = ((eps - noise.double()) ** 2).mean()
    smooth_sum, count = 0.0, 0
    for i in range(b):
        for n in range(1, f - 1):
            d_eps = 2 * eps[i, n] - eps[i, n - 1] - eps[i, n + 1]
            d_x = 2 * x64[i, n] - x64[i, n - 1] - x64[i, n + 1]
            residual = d_eps - (c[i] / config.lambda1) * d_x
            smooth_sum = smooth_sum + residual.abs().sum()
            count += residual.numel()
    loss = mse + config.lambda2 * smooth_sum / count
    loss.backward()

    grads = {k: params[k].grad.double() for k in names}
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    scale = min(1.0, config.max_grad_norm / (norm + 1e-6))
    lr, beta1, beta2 = config.learning_rate, config.adam_beta1, config.adam_beta2
    updated = {}
    for k in names:
        g = grads[k] * scale
        m_hat = (1 - beta1) * g / (1 - beta1)
        v_hat = (1 - beta2) * g * g / (1 - beta2)
        p = params[k].detach().double() * (1 - lr * config.adam_weight_decay)
        updated[k] = p - lr * m_hat / (v_hat.sqrt() + config.adam_epsilon)
    return loss.item(), updated


def test_one_step_matches_a_hand_written_reference(base_weights):
    # Adam's first step is lr * g / (|g| + eps): with eps = 1e-8, gradients near 1e-8 turn
    # float32 rounding into weight changes near lr. A larger eps keeps the comparison
    # well-conditioned while the update is still ~lr for every real gradient.
    # max_grad_norm below the gradient norm (~0.12) so that the clip acts.
    config = TuneConfig(steps=1, learning_rate=1e-3, adam_epsilon=1e-3, max_grad_norm=0.05, seed=7)
    # Two videos (the second moving the other way), so each has its own t and C.
    latents = torch.cat([toy_video(5), toy_video(5).flip(1)])
    context = torch.cat([text_embeds(), -text_embeds()])
    reference_loss, reference = reference_step(video_unet_from(base_weights), latents, context, config)
    video_unet = video_unet_from(base_weights)
    record = Tuner(video_unet, latents, context, config).step()

    assert record.step == 1
    # float32 loss vs the reference's float64 one (same UNet output): ~4k-term blockwise means, <= ~8 eps.
    assert record.total == pytest.approx(reference_loss, rel=8 * FLOAT32_EPS)
    assert record.total == pytest.approx(record.mse + config.lambda2 * record.smooth, rel=2 * FLOAT32_EPS)  # 2 float32 roundings
    tuned = video_unet.trainable_state_dict()
    assert tuned.keys() == reference.keys()
    for k in reference:
        # float32 weights up to ~1 (the norms) after one AdamW step: a few roundings of eps/2 each.
        torch.testing.assert_close(tuned[k].double(), reference[k], atol=8 * FLOAT32_EPS, rtol=0, msg=k)


# ---------------------------------------------------------------- what the loop does


def test_total_loss_decreases_over_sixty_steps(base_weights):
    # Each step has its own random t, so single losses jump; the means of ten move. Checked
    # with noise seeds 0..11, two base models and two temporal inits: the last ten average
    # 0.84-0.92 of the first ten.
    tuner = Tuner(video_unet_from(base_weights), toy_video(5), text_embeds(),
                  TuneConfig(steps=60, learning_rate=1e-3, seed=3))
    totals = [r.total for r in tuner.run()]
    assert len(totals) == 60 and all(math.isfinite(x) for x in totals)
    assert sum(totals[-10:]) / 10 < sum(totals[:10]) / 10


def test_only_the_trainable_set_changes_and_all_of_it_does(base_weights):
    video_unet = video_unet_from(base_weights)
    before = {k: v.clone() for k, v in video_unet.unet.state_dict().items()}
    trainable = set(video_unet.trainable_state_dict())
    Tuner(video_unet, toy_video(4), text_embeds(), TuneConfig(steps=3, learning_rate=1e-3)).run()
    after = video_unet.unet.state_dict()
    assert trainable and trainable < before.keys()
    for k, v in before.items():
        if k in trainable:
            assert not torch.equal(after[k], v), f"trainable {k} did not change"
        else:
            assert torch.equal(after[k], v), f"frozen {k} changed"


def test_unet_is_in_train_mode_during_a_step_and_back_in_eval_after(base_weights, monkeypatch):
    video_unet = video_unet_from(base_weights).eval()
    tuner = Tuner(video_unet, toy_video(4), text_embeds(), TuneConfig(steps=1))
    modes = []
    forward = video_unet.forward
    monkeypatch.setattr(video_unet, "forward", lambda *a: modes.append(video_unet.unet.training) or forward(*a))
    tuner.step()
    assert modes == [True] and not video_unet.training and not video_unet.unet.training


def test_lambda2_zero_is_the_baseline_same_mse_different_update(base_weights):
    latents, context = toy_video(5), text_embeds()
    runs = {}
    for lambda2 in (0.0, 0.2):
        video_unet = video_unet_from(base_weights)
        record = Tuner(video_unet, latents, context, TuneConfig(lambda2=lambda2, learning_rate=1e-3)).step()
        runs[lambda2] = record, video_unet.trainable_state_dict()
    (baseline, baseline_weights), (smooth, smooth_weights) = runs[0.0], runs[0.2]
    assert baseline.mse == smooth.mse
    assert baseline.total == baseline.mse and smooth.total > smooth.mse
    assert baseline.smooth == smooth.smooth  # measured for logging even when it does not count
    assert any(not torch.equal(baseline_weights[k], smooth_weights[k]) for k in baseline_weights)


def test_gradient_checkpointing_gives_the_same_step(base_weights):
    results = []
    for checkpointing in (False, True):
        video_unet = video_unet_from(base_weights)
        config = TuneConfig(gradient_checkpointing=checkpointing, learning_rate=1e-4)
        record = Tuner(video_unet, toy_video(4), text_embeds(), config).step()
        results.append((record, video_unet.trainable_state_dict()))
    (plain, plain_weights), (checkpointed, checkpointed_weights) = results
    # float32 (the Tuner's dtype), the same kernels run again: a few roundings of a loss ~1 and of weights <= ~1.
    assert checkpointed.total == pytest.approx(plain.total, rel=8 * FLOAT32_EPS)
    for k in plain_weights:
        torch.testing.assert_close(checkpointed_weights[k], plain_weights[k], atol=8 * FLOAT32_EPS, rtol=0)


def test_short_video_with_lambda2_zero_tunes_without_a_smooth_term(base_weights):
    tuner = Tuner(video_unet_from(base_weights), toy_video(2), text_embeds(), TuneConfig(lambda2=0.0))
    record = tuner.step()
    assert record.smooth is None and record.total == record.mse


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_float32_master_weights(base_weights, precision):
    video_unet = video_unet_from(base_weights)
    before = trainables(video_unet)
    tuner = Tuner(video_unet, toy_video(4), text_embeds(),
                  TuneConfig(steps=3, learning_rate=1e-3, mixed_precision=precision))
    records = tuner.run()
    assert all(math.isfinite(r.total) for r in records)
    after = video_unet.trainable_state_dict()
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(after[k], before[k]) for k in before)
    assert ("scaler" in tuner.state_dict()) == (precision == "fp16")


def test_tunes_inside_inference_mode_as_comfyui_runs_nodes(base_weights):
    video_unet = video_unet_from(base_weights)
    before = trainables(video_unet)
    with torch.inference_mode():
        latents, context = toy_video(4) * 1.0, text_embeds() * 1.0  # inference tensors
        Tuner(video_unet, latents, context, TuneConfig(steps=2, learning_rate=1e-3)).run()
    assert any(not torch.equal(v, before[k]) for k, v in video_unet.trainable_state_dict().items())


def test_auto_precision_is_none_on_cpu(base_weights):
    tuner = Tuner(video_unet_from(base_weights), toy_video(4), text_embeds(), TuneConfig())
    assert tuner.precision == "no"


# ---------------------------------------------------------------- frozen weights placed in the autocast dtype


def frozen_matmul_weights(video_unet):
    """name -> tensor of the frozen weights of linear and convolution layers."""
    trainable = {id(p) for p in video_unet.trainable_parameters()}
    layers = (torch.nn.Linear, torch.nn.Conv2d)
    return {f"{m_name}.{n}": p for m_name, m in video_unet.unet.named_modules() if isinstance(m, layers)
            for n, p in m.named_parameters(recurse=False) if id(p) not in trainable}


def test_frozen_weights_placed_in_bf16_give_autocast_steps(base_weights):
    """bf16 autocast casts every frozen weight to bf16 at each call; copies made once in bf16
    are the same numbers, so three steps give the same losses and weights."""
    runs = []
    for placed in (False, True):
        video_unet = video_unet_from(base_weights)
        config = TuneConfig(steps=3, learning_rate=1e-3, mixed_precision="bf16")
        placement = video_unet.placed("cpu", tune.matmul_dtype("bf16", "cpu")) if placed else contextlib.nullcontext()
        with placement:
            records = Tuner(video_unet, toy_video(4), text_embeds(), config).run()
        runs.append(([r.total for r in records], trainables(video_unet)))
    (autocast_losses, autocast_weights), (placed_losses, placed_weights) = runs
    # The same bf16 operands: float32 reduction order only (one frozen layer 1 bf16 ulp off: ~600 eps).
    assert placed_losses == pytest.approx(autocast_losses, rel=64 * FLOAT32_EPS)
    for k in autocast_weights:  # float32 weights <= ~1: a few roundings of eps/2
        torch.testing.assert_close(placed_weights[k], autocast_weights[k], atol=8 * FLOAT32_EPS, rtol=0)


def test_placed_copies_leave_the_shared_originals_alone(base_weights):
    """A fork shares its frozen weights with the model it came from: tuning it placed in bf16
    changes neither their dtype, nor their values, nor which tensors the fork holds after."""
    original = video_unet_from(base_weights)
    fork = original.fork()
    frozen = frozen_matmul_weights(fork)
    values = {k: v.detach().clone() for k, v in frozen.items()}
    norms = {k: p for k, p in fork.unet.named_parameters() if ".norm" in k and "norm_temp" not in k}
    trainable_ids = [id(p) for p in fork.trainable_parameters()]
    with fork.placed("cpu", torch.bfloat16):
        inside = frozen_matmul_weights(fork)
        assert all(inside[k].dtype == torch.bfloat16 and inside[k] is not frozen[k] for k in frozen)
        assert all(not p.requires_grad for p in inside.values())
        # Norms (autocast runs them in float32) and the trainables are used as they are.
        assert all(dict(fork.unet.named_parameters())[k] is p for k, p in norms.items())
        assert [id(p) for p in fork.trainable_parameters()] == trainable_ids
        assert all(p.dtype == torch.float32 for p in fork.trainable_parameters())
        Tuner(fork, toy_video(4), text_embeds(), TuneConfig(steps=2, learning_rate=1e-3, mixed_precision="bf16")).run()
    after = frozen_matmul_weights(fork)
    assert all(after[k] is frozen[k] for k in frozen)
    assert all(frozen[k].dtype == torch.float32 and torch.equal(frozen[k], values[k]) for k in frozen)
    shared = dict(original.unet.named_parameters())
    assert all(shared[k] is frozen[k] for k in frozen)
    assert any(not torch.equal(p, q) for p, q in zip(fork.trainable_parameters(), original.trainable_parameters()))


def test_half_precision_originals_tune_placed_with_float32_norms(base_weights):
    """ComfyUI holds SD1.5 in fp16 on a GPU: placed for bf16, the matmul weights become bf16
    and the norms float32 (what autocast computes them in), and the fp16 originals stay."""
    video_unet = video_unet_from(base_weights)
    trainable = {id(p) for p in video_unet.trainable_parameters()}
    frozen = {k: p for k, p in video_unet.unet.named_parameters() if id(p) not in trainable}
    for p in frozen.values():
        p.data = p.data.half()
    matmul = frozen_matmul_weights(video_unet)
    with video_unet.placed("cpu", torch.bfloat16):
        inside = {k: p for k, p in video_unet.unet.named_parameters() if k in frozen}
        assert {k for k, p in inside.items() if p.dtype == torch.bfloat16} == matmul.keys()
        assert all(p.dtype == torch.float32 for k, p in inside.items() if k not in matmul)
        records = Tuner(video_unet, toy_video(4), text_embeds(),
                        TuneConfig(steps=2, learning_rate=1e-3, mixed_precision="bf16")).run()
    assert all(math.isfinite(r.total) for r in records)
    after = dict(video_unet.unet.named_parameters())
    assert all(after[k] is p and p.dtype == torch.float16 for k, p in frozen.items())


def test_half_precision_originals_tune_in_float32_without_autocast(base_weights):
    """A GPU without bf16 ("auto" is then float32): ComfyUI's fp16 weights are placed as float32
    copies, where the Tuner alone refuses half weights without autocast."""
    video_unet = video_unet_from(base_weights)
    for p in video_unet.frozen_parameters():
        p.data = p.data.half()
    config = TuneConfig(steps=2, learning_rate=1e-3, mixed_precision="no")
    with pytest.raises(ValueError, match="non-float32 weights"):
        Tuner(video_unet, toy_video(4), text_embeds(), config)
    with video_unet.placed("cpu", tune.matmul_dtype("no", "cpu")):
        assert all(p.dtype == torch.float32 for p in video_unet.parameters())
        records = Tuner(video_unet, toy_video(4), text_embeds(), config).run()
    assert all(math.isfinite(r.total) for r in records)
    assert all(p.dtype == torch.float16 for p in video_unet.frozen_parameters())


def test_placed_restores_the_originals_when_the_block_fails(base_weights):
    video_unet = video_unet_from(base_weights)
    frozen = frozen_matmul_weights(video_unet)
    with pytest.raises(RuntimeError, match="stop"):
        with video_unet.placed("cpu", torch.bfloat16):
            raise RuntimeError("stop")
    after = frozen_matmul_weights(video_unet)
    assert all(after[k] is frozen[k] and after[k].dtype == torch.float32 for k in frozen)


def weight_copies_saved_for_backward(video_unet, placed):
    """How many tensors autograd saves in one bf16 tuning step that are copies of frozen
    weights: equal to a frozen matmul weight (or its transpose) in bf16, in storage that is
    no parameter's."""
    weights = [w.detach().to(torch.bfloat16) for w in frozen_matmul_weights(video_unet).values()]
    weights += [w.t() for w in weights if w.dim() == 2]
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    placement = video_unet.placed("cpu", torch.bfloat16) if placed else contextlib.nullcontext()
    with placement:
        tuner = Tuner(video_unet, toy_video(4), text_embeds(), TuneConfig(mixed_precision="bf16"))
        storages = {p.untyped_storage().data_ptr() for p in video_unet.parameters()}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            tuner.step()
    copies = [t for t in saved if t.dtype == torch.bfloat16 and t.untyped_storage().data_ptr() not in storages]
    return sum(1 for t in copies if any(t.shape == w.shape and torch.equal(t, w) for w in weights))


def test_placed_frozen_weights_are_not_copied_again_for_the_backward(base_weights):
    assert weight_copies_saved_for_backward(video_unet_from(base_weights), placed=False) > 20  # the control
    assert weight_copies_saved_for_backward(video_unet_from(base_weights), placed=True) == 0


@pytest.mark.parametrize("bf16_hardware, capability, expected", [
    (True, (9, 0), "bf16"),   # H100; Ampere and later
    (False, (7, 5), "fp16"),  # T4, RTX 20xx: fp16 tensor cores, bf16 only emulated
    (False, (7, 0), "fp16"),  # V100
    (False, (6, 1), "no"),    # GTX 10xx: slow fp16, float32
])
def test_auto_precision_on_cuda_follows_the_hardware(monkeypatch, bf16_hardware, capability, expected):
    """Only the decision: which autocast "auto" picks for what torch reports of a GPU."""
    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["including_emulation"] = including_emulation
        return bf16_hardware

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert tune._resolve_precision("auto", torch.device("cuda")) == expected
    assert asked == {"including_emulation": False}  # emulated bf16 does not count
    assert tune.matmul_dtype("auto", "cuda") == {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[expected]


def test_matmul_dtype_follows_mixed_precision():
    assert tune.matmul_dtype("bf16", "cpu") == torch.bfloat16
    assert tune.matmul_dtype("fp16", "cpu") == torch.float16
    assert tune.matmul_dtype("no", "cpu") == torch.float32
    assert tune.matmul_dtype("auto", "cpu") == torch.float32  # auto is float32 on a CPU
    with pytest.raises(ValueError, match="choose one of"):
        tune.matmul_dtype("bf32", "cpu")


# ---------------------------------------------------------------- failures and cancel


@pytest.fixture(params=["fused", "per-tensor"])
def adamw_kind(request, monkeypatch):
    """Tuners made under it get fused AdamW (CPU, CUDA: a bad step is skipped on the device), or
    torch's per-tensor AdamW as on a device without a fused kernel that honours found_inf (MPS,
    DirectML: skipped after a host read)."""
    if request.param == "per-tensor":
        monkeypatch.setattr(tune, "_FUSED_ADAMW_DEVICES", set())
    return request.param


def optimizer_state(tuner):
    return {(i, k): v.clone() for i, state in enumerate(tuner.optimizer.state.values()) for k, v in state.items()}


@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])  # fp16: the gradient scaler skips the step
def test_nan_prediction_raises_and_leaves_the_weights_alone(base_weights, monkeypatch, adamw_kind, precision):
    video_unet = video_unet_from(base_weights)
    tuner = Tuner(video_unet, toy_video(4), text_embeds(), TuneConfig(steps=3, mixed_precision=precision))
    assert tuner._fused == (adamw_kind == "fused")
    tuner.step()
    before, optimizer_before = trainables(video_unet), optimizer_state(tuner)
    forward = video_unet.forward
    # NaN out of the model, through the weights: the backward pass runs and its gradients are NaN.
    monkeypatch.setattr(video_unet, "forward", lambda x, t, c: forward(x, t, c) * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 2.*learning rate.*bf16") as info:
        tuner.step()
    assert isinstance(info.value, ValueError)
    assert tuner.steps_done == 1
    for k, v in video_unet.trainable_state_dict().items():
        assert torch.equal(v, before[k]), k
    after = optimizer_state(tuner)
    assert after.keys() == optimizer_before.keys()
    for k, v in after.items():  # moments and AdamW's step count: the skipped step left no trace
        assert torch.equal(v, optimizer_before[k]), k
    # And the next good step is the second step AdamW takes.
    monkeypatch.undo()
    assert tuner.step().step == 2
    assert all(int(state["step"]) == 2 for state in tuner.optimizer.state.values())


def test_nan_gradient_with_a_finite_loss_raises_and_leaves_the_weights_alone(base_weights, adamw_kind):
    video_unet = video_unet_from(base_weights)
    tuner = Tuner(video_unet, toy_video(4), text_embeds(), TuneConfig(steps=3))
    before = trainables(video_unet)
    # A hook that turns one trainable's gradient into NaN (the loss stays finite).
    parameter = tuner.trainable_parameters[0]
    handle = parameter.register_hook(lambda grad: grad * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"gradient norm is nan at step 1"):
        tuner.step()
    handle.remove()
    assert tuner.steps_done == 0
    for k, v in video_unet.trainable_state_dict().items():
        assert torch.equal(v, before[k]), k


class HostReads(TorchFunctionMode):
    """Records every read of a tensor's values into Python (each one waits for a GPU to finish
    all the work queued before it)."""

    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("setting", [{}, {"mixed_precision": "bf16"}, {"mixed_precision": "fp16"},
                                     {"gradient_checkpointing": True}, {"lambda2": 0.0}])
def test_a_step_reads_the_device_once(base_weights, setting):
    tuner = Tuner(video_unet_from(base_weights), toy_video(4), text_embeds(), TuneConfig(steps=3, **setting))
    tuner.step()  # the optimizer's state is made at its first step
    with HostReads() as mode:
        tuner.step()
    assert mode.reads == ["tolist"]


def test_overflowing_latents_raise_non_finite_loss(base_weights):
    latents = toy_video(4)
    latents[0, 1] = 1e30  # finite, but the squares in the UNet's group norms overflow
    video_unet = video_unet_from(base_weights)
    before = trainables(video_unet)
    with pytest.raises(NonFiniteLossError, match="step 1"):
        Tuner(video_unet, latents, text_embeds(), TuneConfig()).step()
    for k, v in video_unet.trainable_state_dict().items():
        assert torch.equal(v, before[k])


def test_a_raising_callback_cancels_the_run_and_run_continues_later(base_weights):
    tuner = Tuner(video_unet_from(base_weights), toy_video(4), text_embeds(), TuneConfig(steps=5))
    seen = []

    def cancel_at_three(record):
        seen.append(record.step)
        if record.step == 3:
            raise KeyboardInterrupt("cancelled by the user")

    with pytest.raises(KeyboardInterrupt):
        tuner.run(cancel_at_three)
    assert seen == [1, 2, 3] and tuner.steps_done == 3
    assert [r.step for r in tuner.run()] == [4, 5]


# ---------------------------------------------------------------- checkpoints and tuned weights


# fp16 also carries the gradient scaler's state through the file.
@pytest.mark.parametrize("precision", ["no", "fp16"])
def test_resume_from_a_checkpoint_file_is_bitwise_exact(base_weights, tmp_path, precision):
    latents, context = toy_video(5), text_embeds()
    config = TuneConfig(steps=6, learning_rate=1e-3, seed=11, mixed_precision=precision)

    straight = video_unet_from(base_weights)
    straight_records = Tuner(straight, latents, context, config).run()

    path = tmp_path / "tune.safetensors"
    first_half = Tuner(video_unet_from(base_weights), latents, context,
                       TuneConfig(steps=3, learning_rate=1e-3, seed=11, checkpoint_every=3, mixed_precision=precision))
    first_half.run(checkpoint_path=path)
    first_half.step()  # steps after the checkpoint must not leak into it

    # A fresh model whose temporal layers start elsewhere: the checkpoint must restore them.
    resumed = video_unet_from(base_weights, temporal_seed=99)
    tuner = Tuner(resumed, latents, context, config)
    tuner.load_state_dict(tune.load_checkpoint(path))
    assert tuner.steps_done == 3
    resumed_records = tuner.run()

    assert resumed_records == straight_records[3:]
    expected = straight.trainable_state_dict()
    for k, v in resumed.trainable_state_dict().items():
        assert torch.equal(v, expected[k]), k


@pytest.mark.parametrize("saved_by", ["per-tensor", "fused"])
def test_a_checkpoint_resumes_whichever_adamw_saved_it(base_weights, tmp_path, monkeypatch, saved_by):
    """Checkpoints record their optimizer's implementation (per-tensor on a CPU before fused AdamW
    ran there, or from a device without one): the resuming machine runs its own."""
    latents, context = toy_video(5), text_embeds()
    config = TuneConfig(steps=4, learning_rate=1e-3, seed=11)
    path = tmp_path / "tune.safetensors"
    with monkeypatch.context() as patched:
        if saved_by == "per-tensor":
            patched.setattr(tune, "_FUSED_ADAMW_DEVICES", set())
        first = Tuner(video_unet_from(base_weights), latents, context,
                      TuneConfig(steps=2, learning_rate=1e-3, seed=11, checkpoint_every=2))
        first.run(checkpoint_path=path)
    with monkeypatch.context() as patched:
        if saved_by == "fused":
            patched.setattr(tune, "_FUSED_ADAMW_DEVICES", set())
        tuner = Tuner(video_unet_from(base_weights, temporal_seed=99), latents, context, config)
        tuner.load_state_dict(tune.load_checkpoint(path))
        assert tuner._fused == (saved_by == "per-tensor")
        resumed = tuner.run()
    straight = Tuner(video_unet_from(base_weights), latents, context, config).run()
    assert [r.step for r in resumed] == [3, 4]
    # The two implementations round apart (~1 ulp per update: the next losses move ~1 eps); the run
    # goes on where it was.
    for mine, theirs in zip(resumed, straight[2:]):
        assert mine.total == pytest.approx(theirs.total, rel=32 * FLOAT32_EPS)


def test_checkpoint_is_an_atomically_written_safetensors_file(base_weights, tmp_path):
    path = tmp_path / "tune.safetensors"
    tuner = Tuner(video_unet_from(base_weights), toy_video(4), text_embeds(), TuneConfig(steps=4, checkpoint_every=2))
    saves = []
    tuner.run(callback=lambda r: saves.append(os.path.getmtime(path)) if r.step == 2 else None,
              checkpoint_path=path, checkpoint_metadata={"frames": "4"})
    assert saves  # the step-2 checkpoint existed before its callback ran
    assert os.listdir(tmp_path) == ["tune.safetensors"]  # no temporary file left behind
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        metadata = f.metadata()
        rng = f.get_tensor("rng")
    assert rng.dtype == torch.uint8
    assert {k.partition(".")[0] for k in keys} == {"trainable", "optimizer", "rng"}
    assert {"optimizer.0.exp_avg", "optimizer.0.exp_avg_sq"} <= keys
    assert metadata["frames"] == "4"
    checkpoint = tune.load_checkpoint(path)
    assert checkpoint["step"] == 4 and checkpoint["metadata"] == {"frames": "4"}
    assert checkpoint["optimizer"]["state"][0]["step"].dtype == torch.float32


@pytest.mark.parametrize("change, field", [({"seed": 34}, "seed"), ({"variant": "native"}, "variant"),
                                           ({"lambda2": 0.0}, "lambda2")])
def test_loading_a_checkpoint_of_other_settings_is_refused(base_weights, tmp_path, change, field):
    path = tmp_path / "tune.safetensors"
    tuner = Tuner(video_unet_from(base_weights), toy_video(4), text_embeds(), TuneConfig(steps=1))
    tuner.run()
    tune.save_checkpoint(tuner, path)
    other = Tuner(video_unet_from(base_weights), toy_video(4), text_embeds(), TuneConfig(**change))
    with pytest.raises(ValueError, match=rf"{field}: checkpoint .*TuneConfig\(\*\*"):
        other.load_state_dict(tune.load_checkpoint(path))
    assert other.steps_done == 0


def test_loading_a_checkpoint_of_another_video_shape_is_refused(base_weights, tmp_path):
    path = tmp_path / "tune.safetensors"
    tune.save_checkpoint(Tuner(video_unet_from(base_weights), toy_video(4), text_embeds(), TuneConfig()), path)
    other = Tuner(video_unet_from(base_weights), toy_video(5), text_embeds(), TuneConfig())
    with pytest.raises(ValueError, match="same video, frames and resolution"):
        other.load_state_dict(tune.load_checkpoint(path))


def test_tuned_weights_round_trip_with_metadata(base_weights, tmp_path):
    video_unet = video_unet_from(base_weights)
    Tuner(video_unet, toy_video(4), text_embeds(), TuneConfig(steps=2, learning_rate=1e-3)).run()
    path = tmp_path / "tuned.safetensors"
    metadata = {"base_model_hash": "0123abcd", "frames": "4", "resolution": "64x64", "lambda2": "0.2", "steps": "2"}
    tune.save_tuned_weights(video_unet, path, metadata)
    assert os.listdir(tmp_path) == ["tuned.safetensors"]
    state_dict, loaded_metadata = tune.load_tuned_weights(path)
    assert loaded_metadata == metadata
    expected = video_unet.trainable_state_dict()
    assert state_dict.keys() == expected.keys()
    assert all(torch.equal(state_dict[k], expected[k]) for k in expected)

    fresh = video_unet_from(base_weights, temporal_seed=5)
    fresh.load_trainable_state_dict(state_dict)
    assert all(torch.equal(v, expected[k]) for k, v in fresh.trainable_state_dict().items())


def test_files_of_the_other_kind_and_reserved_metadata_are_refused(base_weights, tmp_path):
    video_unet = video_unet_from(base_weights)
    weights, checkpoint = tmp_path / "tuned.safetensors", tmp_path / "ck.safetensors"
    tune.save_tuned_weights(video_unet, weights)
    tune.save_checkpoint(Tuner(video_unet, toy_video(4), text_embeds(), TuneConfig()), checkpoint)
    with pytest.raises(ValueError, match="open it with load_tuned_weights"):
        tune.load_checkpoint(weights)
    with pytest.raises(ValueError, match="open it with load_checkpoint"):
        tune.load_tuned_weights(checkpoint)
    with pytest.raises(ValueError, match="reserved prefix"):
        tune.save_tuned_weights(video_unet, weights, {"smoothvideo.format": "x"})
    with pytest.raises(ValueError, match="strings to strings"):
        tune.save_tuned_weights(video_unet, weights, {"frames": 4})


def test_checkpoint_path_and_checkpoint_every_go_together(base_weights, tmp_path):
    with pytest.raises(ValueError, match="give a checkpoint_path"):
        Tuner(video_unet_from(base_weights), toy_video(4), text_embeds(), TuneConfig(checkpoint_every=5)).run()
    with pytest.raises(ValueError, match="checkpoint_every is 0"):
        Tuner(video_unet_from(base_weights), toy_video(4), text_embeds(), TuneConfig()).run(
            checkpoint_path=tmp_path / "x.safetensors")


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number > 0"),
        ({"lambda1": 0.0}, "lambda1 must be a finite number > 0"),
        ({"lambda2": -0.1}, "lambda2 .* must be a finite number >= 0"),
        ({"lambda2": float("inf")}, "lambda2 .* must be a finite number >= 0"),
        ({"variant": "smoothest"}, "unknown smooth loss variant 'smoothest'; choose one of cross_frame"),
        ({"reduction": "l3"}, "unknown reduction 'l3'; choose one of l1, l2"),
        ({"mixed_precision": "fp8"}, "unknown mixed_precision 'fp8'; choose one of auto, no, bf16, fp16"),
        ({"max_grad_norm": 0.0}, "max_grad_norm must be a finite number > 0"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*64\)"),
        ({"checkpoint_every": -1}, "checkpoint_every must be an integer >= 0"),
        ({"adam_beta2": 1.0}, r"adam_beta2 must be in \[0, 1\)"),
    ],
)
def test_bad_config_is_refused_with_the_fix(bad, message):
    with pytest.raises(ValueError, match=message):
        TuneConfig(**bad)


def test_video_too_short_for_the_smooth_loss_is_refused(base_weights):
    video_unet = video_unet_from(base_weights)
    with pytest.raises(ValueError, match="needs at least 3 frames, but latents has 2: give the video more frames"):
        Tuner(video_unet, toy_video(2), text_embeds(), TuneConfig(variant="cross_frame"))
    Tuner(video_unet, toy_video(2), text_embeds(), TuneConfig(variant="native"))  # first difference: 2 suffice
    with pytest.raises(ValueError, match="needs at least 2 frames"):
        Tuner(video_unet, toy_video(1), text_embeds(), TuneConfig(variant="native"))


def test_bad_inputs_are_refused(base_weights):
    video_unet = video_unet_from(base_weights)
    latents = toy_video(4)
    with pytest.raises(ValueError, match="one prompt embedding per video"):
        Tuner(video_unet, latents, text_embeds().expand(2, -1, -1), TuneConfig())
    with pytest.raises(ValueError, match=r"text_embeds must have shape \(batch, tokens, dim\)"):
        Tuner(video_unet, latents, text_embeds()[0], TuneConfig())
    with pytest.raises(ValueError, match="latents contains NaN"):
        Tuner(video_unet, latents * float("nan"), text_embeds(), TuneConfig())
    with pytest.raises(ValueError, match="the UNet takes 4"):
        Tuner(video_unet, latents[:, :, :3], text_embeds(), TuneConfig())
    with pytest.raises(ValueError, match=r"latents must have shape \(batch, frames"):
        Tuner(video_unet, latents[0], text_embeds(), TuneConfig())
    video_unet.half()
    with pytest.raises(ValueError, match="float32 master weights"):
        Tuner(video_unet, latents, text_embeds(), TuneConfig())


def test_resume_fields_are_config_fields():
    names = {f for f in TuneConfig.__dataclass_fields__}
    assert set(tune._RESUME_FIELDS) <= names
