"""FLOPs of one tuning step and of one UNet forward, counted through the project's real code
path on fake tensors (no arithmetic runs), and an estimate of the tuning step's peak memory.

  python bench/count_flops.py                      # SD1.5 UNet, 8 x 256 px and 24 x 512 px
  python bench/count_flops.py --check              # fake-tensor counts == real CPU counts?
  python bench/count_flops.py --reference          # + the issue's plain 2D UNet reference
  python bench/count_flops.py --memory             # + peak live-tensor memory estimates

What runs: `diffusers.UNet2DConditionModel(**SD15)` (random weights, float32) inflated with
`smooth_core.inflate.inflate_unet` (sparse-causal attention, temporal attention), then

- forward: one `VideoUNet` call on (1, F, 4, S/8, S/8) latents with one (1, 77, 768) text
  context, under torch.no_grad(), as `invert.ddim_invert` / `sample.ddim_sample` call it
  (sampling with CFG runs it on a batch of 2 videos: twice these FLOPs per step);
- tuning step: `smooth_core.tune.Tuner(...).step()` with lambda2 = 0.2 (cross-frame smooth
  loss), mixed_precision "no", default and gradient_checkpointing=True: forward, the
  loss, backward, gradient clipping and the AdamW update of the Tune-A-Video trainable set.

Everything is built and run under torch's FakeTensorMode on the CPU: tensors carry shapes
and dtypes but no data, so the 24 x 512 px step is counted in seconds. Data-dependent
Python scalars (`loss.item()`, `bool(torch.isfinite(norm))` in the Tuner's checks) are
answered with 1 / True by a small dispatch mode, so the checks pass and the control flow
is that of a finite step. `--check` counts a small configuration on real tensors and on
fake tensors and asserts that the per-operator counts agree exactly.

Counting rules are torch.utils.flop_counter.FlopCounterMode's: 2 FLOPs per multiply-add of
mm / addmm / bmm / convolution (forward and the parts of the backward whose gradients are
needed: frozen weights get no weight gradient), nothing for elementwise ops, norms,
softmax or the optimizer. Scaled dot-product attention (SDPA): on the CPU, the fused kernel
is aten._scaled_dot_product_flash_attention_for_cpu (+ _backward), which FlopCounterMode
does NOT count (torch 2.14 counts only the CUDA flash / efficient / cuDNN ops, and the math
kernel through its bmm); this script registers torch's own flash formulas for it, so every
SDPA is counted twice, in two conventions:

- "flash": FlopCounterMode's formulas for the CUDA flash kernel (forward 2 matmuls,
  4 b h s_q s_k d; backward 5 matmuls, 10 b h s_q s_k d: the score recomputation and dq, dk,
  dv whether or not k and v need gradients), i.e. what FlopCounterMode reports on an H100;
- "math": SDPA forced onto the math kernel (torch.nn.attention.sdpa_kernel(MATH)), whose
  bmm are counted by default: no recomputation, and autograd computes only the gradients
  it needs (none for the keys / values of cross-attention, which come from the text, nor for
  those of the first transformer block, which come from frozen layers on the latents). The
  issue's reference numbers (19.3 / 41.1 / 55.2 TFLOP) are in this convention (--reference).

The memory estimate (`--memory`) is torch's MemTracker (torch.distributed._tools), a
dispatch mode that follows every tensor storage (fake storages have sizes) and keeps the
peak of the live bytes by category, over the SECOND tuning step (the AdamW state exists).
These are ESTIMATES of live tensor bytes, not measurements: no caching-allocator rounding
or fragmentation, no cuBLAS / cuDNN / attention workspaces, no CUDA context. Precisions:
"fp32" (mixed_precision "no") and "bf16", the GPU default ("auto"), modelled with CUDA bf16
autocast's cast policy (`cuda_bf16_autocast_like`: CPU autocast casts other ops, and fake
CUDA tensors cannot run a backward without a GPU). The attention kernel is the fused one
(flash-style: no s_q x s_k score matrix is kept, only the output and the log-sum-exp, as the
CUDA flash / memory-efficient kernels); `--memory-sdpa math` shows what the materialising
math kernel would need. `--check` compares the estimate with a real float32 CPU step
(glibc's bytes in use, sampled after every operator).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import pathlib
import platform
import sys
import time
from collections import defaultdict

import diffusers
import torch
from diffusers import UNet2DConditionModel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_tune import SD15, TINY  # noqa: E402

from smooth_core import inflate, tune  # noqa: E402

aten = torch.ops.aten
H100_BF16_DENSE = 989e12  # FLOP/s, H100 SXM dense bf16 (the figure)
TEXT_TOKENS = 77


# ----------------------------------------------------------------------------- counting


class AttentionTally:
    """SDPA FLOPs by kind, from the shapes (q: (batch, heads, s_q, d), k: (batch, heads, s_k, d)):
    cross-attention has s_k = 77 text tokens, sparse-causal self-attention s_k = 2 s_q,
    temporal attention s_q = s_k = frames."""

    def __init__(self, frames: int):
        self.frames = frames
        self.flops: dict[str, int] = defaultdict(int)

    def kind(self, q_shape, k_shape) -> str:
        s_q, s_k = q_shape[2], k_shape[2]
        if s_k == TEXT_TOKENS and s_q != TEXT_TOKENS:
            return "cross (attn2)"
        if s_q == s_k == self.frames:
            return "temporal (attn_temp)"
        if s_k == 2 * s_q:
            return "sparse-causal (attn1)"
        if s_k == s_q:
            return "self, per frame (attn1)"
        return "other"

    def forward(self, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        flops = sdpa_flop_count(q_shape, k_shape, v_shape)
        self.flops[self.kind(q_shape, k_shape)] += flops
        return flops

    def backward(self, grad_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        flops = sdpa_backward_flop_count(grad_shape, q_shape, k_shape, v_shape)
        self.flops[self.kind(q_shape, k_shape)] += flops
        return flops


def flop_counter(tally: AttentionTally) -> FlopCounterMode:
    """FlopCounterMode that also counts the CPU's fused SDPA kernel (and tallies every SDPA by kind)."""
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: tally.forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: tally.backward,
    }
    for op in (aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_efficient_attention,
               aten._scaled_dot_product_cudnn_attention):
        mapping[op] = tally.forward
    for op in (aten._scaled_dot_product_flash_attention_backward,
               aten._scaled_dot_product_efficient_attention_backward,
               aten._scaled_dot_product_cudnn_attention_backward):
        mapping[op] = tally.backward
    return FlopCounterMode(display=False, custom_mapping=mapping)


class FakeScalars(TorchDispatchMode):
    """Answers data-dependent scalar reads (`.item()`, `bool(t)`) of fake tensors with 1 / True,
    so the Tuner's finiteness checks pass. Real tensors are read as usual."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and isinstance(args[0], torch._subclasses.FakeTensor):
            dtype = args[0].dtype
            return True if dtype == torch.bool else (1.0 if dtype.is_floating_point else 1)
        return func(*args, **kwargs)


def sdpa_context(kernel: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH) if kernel == "math" else contextlib.nullcontext()


def build_model(config: dict, fake: bool, inflated: bool = True, seed: int = 0):
    """The (inflated) UNet. Real: on the CPU with diffusers' random init. Fake: on the meta
    device (no init arithmetic), to be given fake CPU storage by `materialize` inside
    FakeTensorMode (nn.Module.to() cannot swap FakeTensor parameters, which inflate_unet's
    .to() would need if it ran under FakeTensorMode). Same module tree, hooks and processors."""
    torch.manual_seed(seed)
    with torch.device("meta") if fake else contextlib.nullcontext():
        unet = UNet2DConditionModel(**config)
        return inflate.inflate_unet(unet) if inflated else unet


def materialize(model, fake: bool):
    if fake:
        model.to_empty(device="cpu")
    return model


def inputs(config: dict, frames: int, size: int, seed: int = 0):
    """latents (1, F, 4, S/8, S/8), text (1, 77, 768) in the current mode."""
    latent = size // 8
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, frames, 4, latent, latent, generator=generator)
    text = torch.randn(1, TEXT_TOKENS, config["cross_attention_dim"], generator=generator)
    return latents, text


def fake_modes(fake: bool) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    if fake:
        stack.enter_context(torch._subclasses.fake_tensor.FakeTensorMode(allow_non_fake_inputs=True))
        stack.enter_context(FakeScalars())
    return stack


@contextlib.contextmanager
def prepared(config: dict, frames: int, size: int, fake: bool = True, inflated: bool = True):
    """(model, latents, text) for one count or estimate, inside the fake modes when `fake`."""
    model = build_model(config, fake, inflated)
    with fake_modes(fake):
        materialize(model, fake)
        yield (model, *inputs(config, frames, size))


def tune_config(gradient_checkpointing: bool, precision: str = "no") -> tune.TuneConfig:
    return tune.TuneConfig(steps=10**6, lambda2=0.2, mixed_precision=precision,
                           gradient_checkpointing=gradient_checkpointing)


def count(fn, frames: int, kernel: str):
    """(total FLOPs, {op: FLOPs}, {attention kind: FLOPs}) of fn()."""
    tally = AttentionTally(frames)
    counter = flop_counter(tally)
    with sdpa_context(kernel), counter:
        fn()
    per_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), per_op, dict(tally.flops)


def count_configuration(config: dict, frames: int, size: int, kernel: str, fake: bool = True) -> dict:
    """Counts for one video shape: forward, tuning step (default, checkpointing)."""
    results = {}
    with prepared(config, frames, size, fake) as (model, latents, text):

        def forward():
            with torch.no_grad():
                model(latents, 981, text)

        results["forward"] = count(forward, frames, kernel)
        for checkpointing in (False, True):
            tuner = tune.Tuner(model, latents, text, tune_config(checkpointing))
            results["step_gc" if checkpointing else "step"] = count(tuner.step, frames, kernel)
            if checkpointing:
                model.unet.disable_gradient_checkpointing()
            del tuner
    return results


def count_step_checkpointing(config: dict, frames: int, size: int, kernel: str, blocks: list[str]) -> int:
    """FLOPs of one tuning step with only `blocks` checkpointed (fake tensors)."""
    with prepared(config, frames, size) as (model, latents, text):
        tuner = tune.Tuner(model, latents, text, tune_config(False))
        model.enable_gradient_checkpointing(blocks)
        return count(tuner.step, frames, kernel)[0]


def count_forward(config: dict, frames: int, size: int, videos: int = 1) -> int:
    """FLOPs of one no-grad forward of the inflated UNet on `videos` videos of F frames (fake tensors)."""
    with prepared(config, frames, size) as (model, latents, text):
        latents, text = latents.expand(videos, -1, -1, -1, -1), text.expand(videos, -1, -1)

        def forward():
            with torch.no_grad():
                model(latents, 981, text)

        return count(forward, frames, "flash")[0]


def count_reference(config: dict, frames: int, size: int, kernel: str) -> dict:
    """The issue's reference: the plain 2D diffusers UNet on F frames as a batch, per-frame
    attention, only the attention queries (to_q) trainable; forward and one backward of a
    plain MSE loss (no optimizer), default and with gradient checkpointing."""
    results = {}
    with prepared(config, frames, size, inflated=False) as (unet, latents, text):
        x = latents.flatten(0, 1)
        context = text.expand(frames, -1, -1)
        t = torch.full((frames,), 981)

        def forward():
            with torch.no_grad():
                unet(x, t, encoder_hidden_states=context)

        results["forward"] = count(forward, frames, kernel)
        unet.requires_grad_(False)
        for name, p in unet.named_parameters():
            if name.endswith("to_q.weight"):
                p.requires_grad_(True)

        def step():
            unet.train()
            out = unet(x, t, encoder_hidden_states=context).sample
            torch.nn.functional.mse_loss(out, torch.zeros_like(out)).backward()

        results["step"] = count(step, frames, kernel)
        unet.enable_gradient_checkpointing()
        results["step_gc"] = count(step, frames, kernel)
    return results


# ----------------------------------------------------------------------------- memory

# CUDA autocast's op lists (aten/src/ATen/autocast_mode.cpp) for the functions an SD1.x UNet
# and the tuning loss call: matmuls, convolutions and SDPA run in bf16; the norms and the
# losses in float32; everything else in the dtype of its inputs.
_LOWER = ("linear", "conv2d", "scaled_dot_product_attention")
_FP32 = ("group_norm", "layer_norm", "mse_loss", "l1_loss", "softmax")


@contextlib.contextmanager
def cuda_bf16_autocast_like():
    """CUDA bf16 autocast's cast policy for torch.nn.functional's linear, conv2d, SDPA (to bf16)
    and group_norm, layer_norm, the losses, softmax (to float32), applied above autograd as
    autocast is, so the cast copies are what autograd saves. CPU autocast would not do: it casts
    a different list (it runs group_norm and layer_norm in bf16, CUDA in float32), which changes
    what is saved. The functions are patched in torch.nn.functional (which nn modules, diffusers
    and smooth_core call) rather than wrapped in a TorchFunctionMode, because the mode stack is
    not active when torch.utils.checkpoint recomputes a block during the backward pass, and
    autocast is (checkpoint restores it)."""
    functional = torch.nn.functional
    originals = {name: getattr(functional, name) for name in (*_LOWER, *_FP32)}

    def wrap(fn, source, target):
        def cast_call(*args, **kwargs):
            args, kwargs = _cast_floats(args, kwargs, source, target)
            return fn(*args, **kwargs)
        return cast_call

    try:
        for name in _LOWER:
            setattr(functional, name, wrap(originals[name], (torch.float32, torch.float16), torch.bfloat16))
        for name in _FP32:
            setattr(functional, name, wrap(originals[name], (torch.bfloat16, torch.float16), torch.float32))
        yield
    finally:
        for name, fn in originals.items():
            setattr(functional, name, fn)


def _cast_floats(args, kwargs, sources, target):
    def cast(x):
        return x.to(target) if isinstance(x, torch.Tensor) and x.dtype in sources else x

    return (torch.utils._pytree.tree_map(cast, args), torch.utils._pytree.tree_map(cast, kwargs))


def frozen_aware_mem_tracker():
    """torch's MemTracker, which (torch 2.14) registers a gradient hook on every parameter of
    every module it sees and fails on frozen ones: here only on parameters that require grad."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class Tracker(MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            def grad_hook(grad):
                self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

            param_memory = buffer_memory = 0
            for param in module.parameters():
                winfos = self._update_and_maybe_create_winfos(param, _MemRefType.PARAM)
                param_memory += sum(w.mem_consumed for w in winfos)
                if param.grad is not None:
                    self._update_and_maybe_create_winfos(param.grad, _MemRefType.GRAD)
                if install_grad_hooks and param.requires_grad and self._param_to_grad_hook_handles.get(param) is None:
                    self._param_to_grad_hook_handles[param] = (
                        param.register_hook(grad_hook),
                        param.register_post_accumulate_grad_hook(lambda p: grad_hook(p.grad)),
                    )
            for buffer in module.buffers():
                winfos = self._update_and_maybe_create_winfos(buffer, _MemRefType.BUFFER)
                buffer_memory += sum(w.mem_consumed for w in winfos)
            return param_memory, buffer_memory

    return Tracker()


# --memory-precision modes: (label, precision, frozen weights). "placed": VideoUNet.placed in
# bf16, as One-shot Tune runs on a GPU; "fp16" / "fp32": the frozen weights in that dtype on the
# device and cast by autocast at every forward (the node before placement held ComfyUI's fp16
# weights that way; the fp32 rows are what a float32 model gets).
MEMORY_MODES = {
    "bf16": ("bf16 autocast, frozen weights placed in bf16 (One-shot Tune)", "bf16", "placed"),
    "bf16-fp16": ("bf16 autocast, frozen fp16 weights cast at each forward", "bf16", "fp16"),
    "bf16-fp32": ("bf16 autocast, frozen float32 weights cast at each forward", "bf16", "fp32"),
    "fp32": ("float32", "fp32", "fp32"),
}


def estimate_memory(config: dict, frames: int, size: int, checkpointing: bool, mode: str, kernel: str,
                    blocks: list[str] | None = None) -> dict:
    """Peak live tensor bytes of the second tuning step (AdamW state already allocated), by
    MemTracker category, on fake tensors. mode: a key of MEMORY_MODES; "bf16" precision is
    CUDA bf16 autocast's policy over the forward pass and the loss, as the Tuner's "auto".
    blocks: with checkpointing, checkpoint only these UNet parts (VideoUNet.enable_gradient_checkpointing)."""
    _, precision, frozen = MEMORY_MODES[mode]
    with prepared(config, frames, size) as (model, latents, text), contextlib.ExitStack() as stack:
        # Built while every weight is float32: the Tuner runs with mixed_precision "no" and the
        # policy below stands in for CUDA autocast (a Tuner refuses half weights without autocast).
        tuner = tune.Tuner(model, latents, text, tune_config(checkpointing and blocks is None))
        if checkpointing and blocks is not None:
            model.enable_gradient_checkpointing(blocks)
        if frozen == "fp16":
            for p in model.frozen_parameters():
                p.data = p.data.half()
        elif frozen == "placed":
            stack.enter_context(model.placed("cpu", torch.bfloat16))
        policy = cuda_bf16_autocast_like() if precision == "bf16" else contextlib.nullcontext()
        with sdpa_context(kernel), policy:
            tuner.step()  # allocates the AdamW state
            tracker = frozen_aware_mem_tracker()
            tracker.track_external(model, tuner.optimizer, tuner.latents, tuner.text_embeds)
            with tracker:
                tuner.step()
        peak = tracker.get_tracker_snapshot("peak")
    (snapshot,) = peak.values()
    return {str(k.value if hasattr(k, "value") else k): v for k, v in snapshot.items()}


# ----------------------------------------------------------------------------- checks


def check_counts(config: dict, name: str, frames: int, size: int, kernel: str) -> bool:
    """Real CPU counts == fake counts, operator by operator and attention kind by kind."""
    start = time.perf_counter()
    real = count_configuration(config, frames, size, kernel, fake=False)
    fake = count_configuration(config, frames, size, kernel, fake=True)
    same = all(real[k][1] == fake[k][1] and real[k][2] == fake[k][2] for k in real)
    for key in real:
        print(f"| {name} | {frames} x {size} px | {kernel} | {PASS_NAMES[key]} | {real[key][0]:,} | {fake[key][0]:,} | "
              f"{'yes' if real[key][1] == fake[key][1] and real[key][2] == fake[key][2] else 'NO'} |", flush=True)
    print(f"  ({name}, {kernel}: {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return same


def malloc_in_use() -> int:
    """glibc's bytes in use (mallinfo2: heap + mmap), where torch's CPU allocator gets its memory."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


class MallocPeak(TorchDispatchMode):
    """Peak of glibc's bytes in use, sampled after every operator."""

    def __init__(self):
        super().__init__()
        self.peak = malloc_in_use()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, malloc_in_use())
        return out


def check_memory(config: dict, name: str, frames: int, size: int, checkpointing: bool) -> bool:
    """The fake-tensor estimate of the second step's peak above the state held between steps
    (parameters, AdamW state, the Tuner's inputs) against a real float32 CPU step: the peak
    of glibc's bytes in use (an allocator measurement) and MemTracker on the real tensors."""
    import gc

    model = build_model(config, fake=False)
    latents, text = inputs(config, frames, size)
    tuner = tune.Tuner(model, latents, text, tune_config(checkpointing))
    tuner.step()
    gc.collect()
    base = malloc_in_use()
    probe = MallocPeak()
    with probe:
        tuner.step()
    measured = probe.peak - base
    tracker = frozen_aware_mem_tracker()
    tracker.track_external(model, tuner.optimizer, tuner.latents, tuner.text_embeds)
    (held,) = tracker.get_tracker_snapshot("current").values()
    with tracker:
        tuner.step()
    (real_peak,) = tracker.get_tracker_snapshot("peak").values()
    real_tracked = real_peak["Total"] - held["Total"]
    estimate = estimate_memory(config, frames, size, checkpointing, "fp32", "flash")
    held_fake = sum(estimate[k] for k in ("Parameter", "Buffer", "Optstate", "Other"))
    estimated = estimate["Total"] - held_fake
    ok = abs(estimated - measured) <= 0.02 * measured
    mode = "grad. checkpointing" if checkpointing else "default"
    print(f"| {name} | {frames} x {size} px | {mode} | {measured / 2**20:.2f} MiB | {real_tracked / 2**20:.2f} MiB | "
          f"{estimated / 2**20:.2f} MiB | {estimated / measured - 1:+.2%} |", flush=True)
    return ok


# ----------------------------------------------------------------------------- report

PASS_NAMES = {"forward": "forward", "step": "tuning step, default", "step_gc": "tuning step, grad. checkpointing"}


def tflop(n: float) -> str:
    return f"{n / 1e12:.2f}"


def header(title: str, columns: list[str]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--videos", default="8x256,24x512", help="comma-separated FRAMESxPIXELS")
    parser.add_argument("--reference", action="store_true", help="also count the issue's plain 2D UNet reference")
    parser.add_argument("--memory", action="store_true", help="also estimate the tuning step's peak memory")
    parser.add_argument("--memory-precision", default="bf16,bf16-fp16,bf16-fp32,fp32",
                        help="comma-separated modes: " + "; ".join(f"{k}: {v[0]}" for k, v in MEMORY_MODES.items()))
    parser.add_argument("--memory-sdpa", choices=("flash", "math"), default="flash",
                        help="attention kernel of the memory estimate: fused (flash-style) or math (materialises the scores)")
    parser.add_argument("--checkpoint-blocks", default=None,
                        help="';'-separated sets of UNet parts to checkpoint alone, e.g. "
                             "'down_blocks.0,up_blocks.3;down_blocks.0,down_blocks.1,up_blocks.2,up_blocks.3': "
                             "step FLOPs and bf16 memory estimate of each set")
    parser.add_argument("--check", action="store_true",
                        help="only check: fake counts == real CPU counts (tiny and sd15, 3 frames x 64 px), "
                             "and the memory estimate against a real CPU step (tiny, 4 x 128 px)")
    options = parser.parse_args()
    config = SD15 if options.model == "sd15" else TINY
    print(f"{datetime.date.today()}, {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}")

    if options.check:
        header("FLOP counts, real CPU tensors vs fake tensors (lambda2 = 0.2)",
               ["model", "video", "SDPA", "pass", "FLOP, real", "FLOP, fake", "every operator equal"])
        ok = all([check_counts(TINY, "tiny", 3, 64, "flash"), check_counts(TINY, "tiny", 3, 64, "math"),
                  check_counts(SD15, "sd15", 3, 64, "flash")])
        header("Peak memory of a float32 CPU tuning step above the state held between steps",
               ["model", "video", "mode", "measured (glibc in use)", "MemTracker, real tensors",
                "estimate, fake tensors", "estimate / measured - 1"])
        ok = all([check_memory(TINY, "tiny", 4, 128, False), check_memory(TINY, "tiny", 4, 128, True)]) and ok
        print("\ncheck passed" if ok else "\ncheck FAILED")
        sys.exit(0 if ok else 1)

    videos = [tuple(int(x) for x in v.split("x")) for v in options.videos.split(",")]
    counts = {}
    for frames, size in videos:
        for kernel in ("flash", "math"):
            start = time.perf_counter()
            counts[frames, size, kernel] = count_configuration(config, frames, size, kernel)
            print(f"  counted {frames} x {size} px, {kernel}: {time.perf_counter() - start:.0f} s", file=sys.stderr)

    header(f"FLOPs per pass, {options.model} UNet inflated (sparse-causal + temporal attention), TFLOP "
           "(SDPA flash: FlopCounterMode's flash formulas, backward with the score recomputation; "
           "math: the math kernel's bmm, no recomputation)",
           ["video", "SDPA counted as", "forward", "tuning step, default", "tuning step, grad. checkpointing",
            "SDPA share (fwd / step / ckpt)", "step at 989 TFLOP/s (default / ckpt)"])
    for frames, size in videos:
        for kernel in ("flash", "math"):
            r = counts[frames, size, kernel]
            shares = []
            for key in ("forward", "step", "step_gc"):
                total, per_op, kinds = r[key]
                sdpa = sum(kinds.values()) if kernel == "flash" else per_op.get("aten.bmm", 0)
                shares.append(f"{sdpa / total:.1%}")
            print(f"| {frames} x {size} px | {kernel} | {tflop(r['forward'][0])} | {tflop(r['step'][0])} | "
                  f"{tflop(r['step_gc'][0])} | {' / '.join(shares)} | "
                  f"{r['step'][0] / H100_BF16_DENSE * 1e3:.1f} ms / {r['step_gc'][0] / H100_BF16_DENSE * 1e3:.1f} ms |")
    header("SDPA FLOPs by attention (flash convention), TFLOP",
           ["video", "pass", "sparse-causal attn1", "cross attn2", "temporal attn_temp", "all SDPA", "all"])
    for frames, size in videos:
        for key in ("forward", "step", "step_gc"):
            total, _, kinds = counts[frames, size, "flash"][key]
            print(f"| {frames} x {size} px | {PASS_NAMES[key]} | {tflop(kinds.get('sparse-causal (attn1)', 0))} | "
                  f"{tflop(kinds.get('cross (attn2)', 0))} | {tflop(kinds.get('temporal (attn_temp)', 0))} | "
                  f"{tflop(sum(kinds.values()))} | {tflop(total)} |")

    header("FLOPs per operator (flash convention), TFLOP", ["video", "pass", "operator", "TFLOP"])
    for frames, size in videos:
        for key in ("forward", "step", "step_gc"):
            for op, n in sorted(counts[frames, size, "flash"][key][1].items()):
                print(f"| {frames} x {size} px | {PASS_NAMES[key]} | {op.removeprefix('aten.')} | {tflop(n)} |")

    if options.reference:
        header("The issue's reference: plain 2D diffusers UNet, frames as a batch, per-frame attention, "
               "only to_q trainable, MSE backward, no optimizer, TFLOP",
               ["video", "SDPA counted as", "forward", "step, default", "step, grad. checkpointing"])
        for frames, size in videos:
            for kernel in ("flash", "math"):
                r = count_reference(config, frames, size, kernel)
                print(f"| {frames} x {size} px | {kernel} | {tflop(r['forward'][0])} | {tflop(r['step'][0])} | "
                      f"{tflop(r['step_gc'][0])} |")

    if options.memory:
        header("ESTIMATED peak memory of a tuning step (second step: AdamW state allocated), live tensor "
               "bytes on fake tensors, GiB; SDPA: " + ("fused kernel (no score matrix kept)" if options.memory_sdpa == "flash"
                                               else "math kernel (score matrices materialised)"),
               ["video", "precision", "mode", "parameters", "AdamW state", "gradients", "activations",
                "backward temporaries", "total (estimate)"])
        for frames, size in videos:
            for precision in options.memory_precision.split(","):
                for checkpointing in (False, True):
                    start = time.perf_counter()
                    m = estimate_memory(config, frames, size, checkpointing, precision, options.memory_sdpa)
                    print(f"  estimated {frames} x {size} px {precision} {checkpointing}: "
                          f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
                    gib = {k: f"{v / 2**30:.2f}" for k, v in m.items()}
                    mode = "grad. checkpointing" if checkpointing else "default"
                    label = MEMORY_MODES[precision][0]
                    print(f"| {frames} x {size} px | {label} | {mode} | {gib['Parameter']} | {gib['Optstate']} | "
                          f"{gib['Gradient']} | {gib['Activation']} | {gib['Temp']} | {gib['Total']} |", flush=True)


    if options.checkpoint_blocks:
        header("Gradient checkpointing of some UNet parts only: tuning step FLOPs (math convention) and ESTIMATED "
               "peak memory (bf16 autocast, frozen weights placed in bf16, fused attention), against none and all",
               ["video", "checkpointed", "step TFLOP", "vs no checkpointing", "memory estimate (GiB)"])
        for frames, size in videos:
            sets = [None] + [s.split(",") for s in options.checkpoint_blocks.split(";")] + ["all"]
            for blocks in sets:
                if blocks is None:
                    flop, m = counts[frames, size, "math"]["step"][0], estimate_memory(config, frames, size, False, "bf16", "flash")
                elif blocks == "all":
                    flop, m = counts[frames, size, "math"]["step_gc"][0], estimate_memory(config, frames, size, True, "bf16", "flash")
                else:
                    flop = count_step_checkpointing(config, frames, size, "math", blocks)
                    m = estimate_memory(config, frames, size, True, "bf16", "flash", blocks)
                base = counts[frames, size, "math"]["step"][0]
                label = "none" if blocks is None else "all" if blocks == "all" else ", ".join(blocks)
                print(f"| {frames} x {size} px | {label} | {tflop(flop)} | {flop / base - 1:+.1%} | {m['Total'] / 2**30:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
