"""One-shot video tuning (Tune-A-Video) with the paper's smooth loss, Eq. 4.

    L = MSE(eps_theta(x_t, t, text), noise) + lambda2 * L_noise(eps_theta, x_t, C)

One `Tuner` holds all the state of a run: the inflated model's trainable set, the AdamW
optimizer, the step counter and a CPU `torch.Generator` that draws every step's noise and
timesteps, so a run is reproducible whatever the device, and a run resumed from a checkpoint
ends bitwise where the uninterrupted run ends (CPU, float32).

Checkpoints and tuned weights are safetensors files (no pickle): tensors in the file, the
rest as JSON strings in its metadata, each written to a temporary file beside the target
and moved into place, so a crash never leaves a half-written file under the real name.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
from dataclasses import asdict, dataclass

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from . import checks, losses, schedule

__all__ = [
    "MIXED_PRECISION",
    "NonFiniteLossError",
    "StepRecord",
    "TuneConfig",
    "TEMPORARY_SUFFIX_LENGTH",
    "Tuner",
    "load_checkpoint",
    "load_tuned_weights",
    "matmul_dtype",
    "save_checkpoint",
    "save_tuned_weights",
    "temporary_files",
    "unet_fingerprint",
]

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
# The dtype autocast computes matmuls and convolutions in, per resolved precision ("no": none).
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Metadata keys this module writes; user metadata may not use the prefix.
_RESERVED_PREFIX = "smoothvideo."
_FORMAT_KEY = "smoothvideo.format"
_STATE_KEY = "smoothvideo.tuner_state"
_CHECKPOINT_FORMAT = "tune_checkpoint_v1"
_WEIGHTS_FORMAT = "tuned_weights_v1"

# Config fields that define the optimisation problem: a checkpoint resumes only into a
# Tuner that agrees on all of them. steps, checkpoint_every, mixed_precision and
# gradient_checkpointing may change between sessions (e.g. to extend a run).
_RESUME_FIELDS = (
    "seed",
    "learning_rate",
    "lambda1",
    "lambda2",
    "variant",
    "reduction",
    "max_grad_norm",
    "adam_beta1",
    "adam_beta2",
    "adam_weight_decay",
    "adam_epsilon",
)


class NonFiniteLossError(ValueError):
    """The loss (or the gradient norm) of a step was NaN or inf; the weights were not updated."""


@dataclass(frozen=True)
class TuneConfig:
    """Hyperparameters of one-shot tuning; the defaults are the paper's (Tune-A-Video's for the optimizer).

    Attributes:
        steps: optimizer steps of the whole run.
        learning_rate: AdamW learning rate (constant).
        lambda1: the divisor of C in the smooth loss (Eq. 3).
        lambda2: weight of the smooth loss in Eq. 4; 0 is the Tune-A-Video baseline.
        variant: smooth loss form, one of `losses.VARIANTS`.
        reduction: "l1" (mean absolute value, as the published code) or "l2".
        seed: seeds the CPU generator of the per-step noise and timesteps.
        max_grad_norm: the trainable gradients are clipped to this total L2 norm.
        checkpoint_every: `Tuner.run` writes a checkpoint every this many steps; 0 = never.
        mixed_precision: "auto" (bf16 autocast on a CUDA device with bf16 hardware, fp16 on
            Volta and Turing GPUs, else none), "no", "bf16", or "fp16" (autocast with a
            gradient scaler). Autocast covers the forward pass and the loss only; the
            trainable weights stay float32.
        gradient_checkpointing: recompute activations in the backward pass (less memory,
            about a third more time).
        adam_beta1, adam_beta2, adam_weight_decay, adam_epsilon: AdamW's, as Tune-A-Video.
    """

    steps: int = 500
    learning_rate: float = 3e-5
    lambda1: float = 1000.0
    lambda2: float = 0.2
    variant: str = "cross_frame"
    reduction: str = "l1"
    seed: int = 33
    max_grad_norm: float = 1.0
    checkpoint_every: int = 0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8

    def __post_init__(self):
        if not _is_int(self.steps) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not _is_int(self.checkpoint_every) or self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be an integer >= 0 (0 = never), got {self.checkpoint_every!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        _require_positive("learning_rate", self.learning_rate, "3e-5 is the paper's value")
        _require_positive("lambda1", self.lambda1, "1000 is the paper's value")
        checks.require_nonnegative_finite("lambda2 (0 = Tune-A-Video baseline, 0.2 = the paper)", self.lambda2)
        _require_positive("max_grad_norm", self.max_grad_norm, "1.0 is the published code's value")
        _require_positive("adam_epsilon", self.adam_epsilon, "1e-8 is Tune-A-Video's value")
        checks.require_nonnegative_finite("adam_weight_decay", self.adam_weight_decay)
        for name in ("adam_beta1", "adam_beta2"):
            beta = getattr(self, name)
            if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
                raise ValueError(f"{name} must be in [0, 1), got {beta!r} (Tune-A-Video: 0.9 and 0.999)")
        if self.variant not in losses.VARIANTS:
            raise ValueError(
                f"unknown smooth loss variant {self.variant!r}; choose one of {', '.join(losses.VARIANTS)}"
            )
        if self.reduction not in losses.REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduction!r}; choose one of {', '.join(losses.REDUCTIONS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"unknown mixed_precision {self.mixed_precision!r}; choose one of {', '.join(MIXED_PRECISION)}"
            )
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be True or False, got {self.gradient_checkpointing!r}")


@dataclass(frozen=True)
class StepRecord:
    """The losses of one optimizer step, measured before its update.

    `step` counts completed steps (1 after the first). `smooth` is None when the video is
    too short for the variant (possible only with lambda2 = 0).
    """

    step: int
    total: float
    mse: float
    smooth: float | None


class Tuner:
    """The tuning state of one video: model, optimizer, step counter and noise generator.

    Args:
        video_unet: a video model: the core's inflated UNet (`inflate.inflate_unet`), or the
            ComfyUI-native one's view (`nodes/video_tuning.NativeTunable`). What the Tuner uses of
            it: `video_unet(x_t, t, text_embeds)` -> eps, `trainable_parameters()`,
            `mark_trainable()`, `trainable_state_dict()` / `load_trainable_state_dict()`,
            `parameters()`, `in_channels`, `train()` / `training` and
            `enable_gradient_checkpointing()`. Its trainable set is marked trainable and
            optimised; everything else is frozen. Trainable parameters must be float32 (the
            optimizer's master weights); with mixed precision the frozen ones may be half
            precision, and are best held in the autocast dtype: for the core's model, build
            the Tuner inside `video_unet.placed(device, matmul_dtype(config.mixed_precision, device))`.
        latents: (b, f, c, h, w) CLEAN latents already multiplied by the VAE scale factor
            (0.18215 for SD1.x). Whether they are a sample of the VAE posterior (as the
            published code) or its mean is the caller's choice; they stay fixed for the run.
        text_embeds: (b, n, d) prompt embeddings, one per video.
        config: hyperparameters.
        alphas_cumprod: (T,) the noise schedule; default `schedule.sd15_alphas_cumprod()`.
            Timesteps are drawn uniformly from [0, T).

    Each step draws, from the CPU generator seeded with `config.seed`, first the noise
    (b, f, c, h, w) ~ N(0, I) in float32, then one timestep per video (b,); both then move
    to the model's device. The UNet is in train() mode during a step (diffusers only
    checkpoints gradients in training mode; SD1.x has no dropout, so the output is the
    same) and back in its previous mode afterwards. Steps run with gradients enabled and
    outside inference mode, as ComfyUI executes nodes under `torch.inference_mode()`.
    """

    def __init__(self, video_unet, latents: torch.Tensor, text_embeds: torch.Tensor, config: TuneConfig,
                 alphas_cumprod: torch.Tensor | None = None):
        if not isinstance(config, TuneConfig):
            raise ValueError(f"config must be a TuneConfig, got {type(config).__name__}")
        self.config = config
        self.video_unet = video_unet
        device = next(video_unet.parameters()).device
        self.device = device

        if config.lambda2 > 0:
            checks.require_video("latents", latents, losses.min_frames(config.variant),
                                 f"tuning with the {config.variant} smooth loss")
        else:
            checks.require_video("latents", latents, 1, "tuning")
        in_channels = video_unet.in_channels
        if latents.shape[2] != in_channels:
            raise ValueError(
                f"latents have {latents.shape[2]} channels but the UNet takes {in_channels}: "
                f"pass VAE latents of the model's own VAE"
            )
        if not isinstance(text_embeds, torch.Tensor) or text_embeds.dim() != 3:
            shape = tuple(text_embeds.shape) if isinstance(text_embeds, torch.Tensor) else type(text_embeds).__name__
            raise ValueError(f"text_embeds must have shape (batch, tokens, dim), got {shape}")
        if text_embeds.shape[0] != latents.shape[0]:
            raise ValueError(
                f"latents hold {latents.shape[0]} videos but text_embeds {text_embeds.shape[0]} prompts: "
                f"give one prompt embedding per video"
            )
        checks.require_finite("latents", latents)
        checks.require_finite("text_embeds", text_embeds)

        if alphas_cumprod is None:
            alphas_cumprod = schedule.sd15_alphas_cumprod()
        alphas_cumprod = torch.as_tensor(alphas_cumprod)
        if alphas_cumprod.dim() != 1 or not alphas_cumprod.is_floating_point():
            raise ValueError(f"alphas_cumprod must be a 1-D float tensor, got {tuple(alphas_cumprod.shape)}")
        if not bool(((alphas_cumprod > 0) & (alphas_cumprod <= 1)).all()):
            raise ValueError("alphas_cumprod must lie in (0, 1]; pass the model's noise schedule")
        # Kept on the CPU in float64: the timesteps are drawn there and C needs >= float32.
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)

        self.precision = _resolve_precision(config.mixed_precision, device)
        with torch.inference_mode(False):
            video_unet.mark_trainable()
        self.trainable_parameters = list(video_unet.trainable_parameters())
        if not self.trainable_parameters:
            raise ValueError("the video UNet has no trainable parameters; inflate it with inflate.inflate_unet")
        half = sorted({str(p.dtype) for p in self.trainable_parameters if p.dtype != torch.float32})
        if half:
            raise ValueError(
                f"trainable parameters must be float32 master weights, found {', '.join(half)}: "
                f"load the UNet in float32 and use mixed_precision for speed"
            )
        if self.precision == "no" and any(p.dtype != torch.float32 for p in video_unet.parameters()):
            raise ValueError(
                "the UNet has non-float32 weights: use mixed_precision 'bf16' or 'fp16', or cast it to float32"
            )
        if config.gradient_checkpointing:
            video_unet.enable_gradient_checkpointing()

        with torch.inference_mode(False):
            # Clones made outside inference mode, so autograd may use them even when the
            # caller's tensors are inference tensors (ComfyUI).
            self.latents = latents.detach().to(device, torch.float32).clone()
            self.text_embeds = text_embeds.detach().to(device, torch.float32).clone()
            self.optimizer, self._fused = _adamw(self.trainable_parameters, config, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.steps_done = 0

    def step(self) -> StepRecord:
        """One optimizer step of Eq. 4. On a NaN/inf loss it raises NonFiniteLossError without
        touching the weights, the optimizer state or the step counter (the generator has moved on
        by one draw; with fp16 the gradient scaler has lowered its scale, as for an overflow).
        The results are read from the device once, at the end of the step; on a GPU the only
        other syncs are the copies of the step's inputs at its start, when nothing is queued."""
        module = self.video_unet
        was_training = module.training
        module.train()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                return self._step()
        finally:
            module.train(was_training)

    def _step(self) -> StepRecord:
        x0 = self.latents
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=self.generator, dtype=torch.float32)
        t = torch.randint(0, self.alphas_cumprod.shape[0], (b,), generator=self.generator)
        a_t = self.alphas_cumprod[t]
        sqrt_a = a_t.sqrt().float().view(b, 1, 1, 1, 1).to(self.device)
        sqrt_one_minus_a = (1.0 - a_t).sqrt().float().view(b, 1, 1, 1, 1).to(self.device)
        noise = noise.to(self.device)
        x_t = sqrt_a * x0 + sqrt_one_minus_a * noise
        c = schedule.c_for_timesteps(t, self.alphas_cumprod).to(self.device)
        t = t.to(self.device)

        cfg = self.config
        with self._autocast():
            eps = self.video_unet(x_t, t, self.text_embeds)
            if x0.shape[1] >= losses.min_frames(cfg.variant):
                total, mse, smooth = losses.total_loss(
                    eps, noise, x_t, c, cfg.lambda1, cfg.lambda2, cfg.variant, cfg.reduction
                )
            else:  # too short to measure smoothness; only allowed with lambda2 = 0
                total = mse = torch.nn.functional.mse_loss(eps.float(), noise)
                smooth = None

        step = self.steps_done + 1
        # No host read until the update is queued: a NaN or inf step is skipped on the device
        # (fused AdamW's found_inf, as GradScaler uses it), so the GPU never waits for the host
        # in the middle of a step; the values come back in one read at its end.
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.trainable_parameters, cfg.max_grad_norm)
            # The scaler skips the update (and lowers its scale) when fp16 gradients overflowed,
            # which a NaN loss makes them do; only the loss itself is an error.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.trainable_parameters, cfg.max_grad_norm)
            finite = torch.isfinite(total.detach()) & torch.isfinite(norm)
            self._update_if(finite)
        parts = [total, mse, norm] + ([smooth] if smooth is not None else [])
        values = torch.stack([v.detach().float() for v in parts]).tolist()  # the step's one host read
        self.optimizer.zero_grad(set_to_none=True)
        total_value, mse_value, norm_value = values[:3]
        smooth_value = values[3] if smooth is not None else None
        if not math.isfinite(total_value):
            raise NonFiniteLossError(
                f"the loss is {total_value} at step {step}; the weights were not updated. Lower the learning "
                f"rate, use mixed_precision 'bf16' or 'no' rather than 'fp16', and check that the latents and "
                f"text embeddings are sane"
            )
        if self.scaler is None and not math.isfinite(norm_value):
            raise NonFiniteLossError(
                f"the gradient norm is {norm_value} at step {step}; the weights were not updated. Lower the "
                f"learning rate and check that the latents and text embeddings are sane"
            )
        self.steps_done = step
        return StepRecord(step, total_value, mse_value, smooth_value)

    def _update_if(self, finite: torch.Tensor) -> None:
        """The optimizer step, skipped where `finite` (a 0-dim device bool) is False."""
        if self._fused:
            # Read on the device: the fused kernel returns at once when found_inf is 1 and takes
            # its step count back, so a skipped step leaves weights and optimizer state as they were.
            self.optimizer.grad_scale = None
            self.optimizer.found_inf = (~finite).float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.grad_scale, self.optimizer.found_inf
        elif finite:  # a host read; only where the device has no fused AdamW
            self.optimizer.step()

    def _autocast(self):
        if self.precision == "no":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def run(self, callback=None, checkpoint_path: str | os.PathLike | None = None,
            checkpoint_metadata: dict[str, str] | None = None) -> list[StepRecord]:
        """Step from `steps_done` to `config.steps`.

        Args:
            callback: called with each StepRecord after its step (progress, cancel). An
                exception it raises propagates and ends the run; `steps_done` then tells how
                far it got, and a later `run()` continues from there.
            checkpoint_path: where a checkpoint goes every `config.checkpoint_every` steps
                (overwritten each time, before the callback sees that step). Required when
                checkpoint_every > 0, refused when it is 0.
            checkpoint_metadata: strings stored with each checkpoint (see save_checkpoint).

        Returns the records of the steps this call ran.
        """
        every = self.config.checkpoint_every
        if every and checkpoint_path is None:
            raise ValueError(f"checkpoint_every is {every}: give a checkpoint_path, or set checkpoint_every to 0")
        if not every and checkpoint_path is not None:
            raise ValueError("a checkpoint_path was given but checkpoint_every is 0: set how often to save")
        records = []
        while self.steps_done < self.config.steps:
            record = self.step()
            records.append(record)
            if every and record.step % every == 0:
                save_checkpoint(self, checkpoint_path, checkpoint_metadata or {})
            if callback is not None:
                callback(record)
        return records

    def state_dict(self) -> dict:
        """Everything a resume needs. Tensors share storage with the live state (like
        `nn.Module.state_dict`): save or clone them before stepping on.

        Keys: "trainable" (name -> tensor), "optimizer" (torch's optimizer state dict),
        "step" (int), "rng" (uint8 generator state), "config" (dict), "video_shape"
        ([b, f, c, h, w]) and, with fp16, "scaler" (the GradScaler's state).
        """
        state = {
            "trainable": self.video_unet.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.steps_done,
            "rng": self.generator.get_state(),
            "config": asdict(self.config),
            "video_shape": list(self.latents.shape),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()` / `load_checkpoint()`. Refuses a state made with another
        seed, learning rate, loss or optimizer setting, or for a video of another shape."""
        missing = sorted({"trainable", "optimizer", "step", "rng", "config", "video_shape"} - state.keys())
        if missing:
            raise ValueError(f"not a tuner state: missing {', '.join(missing)}")
        theirs = state["config"]
        mine = asdict(self.config)
        differing = [f"{k}: checkpoint {theirs.get(k)!r}, this run {mine[k]!r}"
                     for k in _RESUME_FIELDS if theirs.get(k) != mine[k]]
        if differing:
            raise ValueError(
                "the checkpoint was made with different settings (" + "; ".join(differing) + "): resume with "
                "the checkpoint's config, e.g. TuneConfig(**{**checkpoint['config'], 'steps': N})"
            )
        if list(state["video_shape"]) != list(self.latents.shape):
            raise ValueError(
                f"the checkpoint tuned a video of shape {list(state['video_shape'])}, this run has "
                f"{list(self.latents.shape)}: resume with the same video, frames and resolution"
            )
        step = state["step"]
        if not _is_int(step) or step < 0:
            raise ValueError(f"checkpoint step must be an integer >= 0, got {step!r}")
        self.video_unet.load_trainable_state_dict(state["trainable"])
        with torch.inference_mode(False):
            self.optimizer.load_state_dict(state["optimizer"])
        # The implementation is this machine's choice, not the checkpoint's (whose param groups
        # say how the optimizer that saved it ran: per-tensor on a CPU before 2026-11-25, or on
        # a device without a fused kernel).
        for group in self.optimizer.param_groups:
            group["fused"], group["foreach"] = self._fused or None, None
        self.generator.set_state(state["rng"].to("cpu", torch.uint8))
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.steps_done = step


def save_checkpoint(tuner: Tuner, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write `tuner.state_dict()` to a safetensors file, atomically.

    Tensors: "trainable.<name>", "optimizer.<param index>.<name>" (exp_avg, exp_avg_sq),
    "rng" (uint8). The metadata holds the caller's strings and, under "smoothvideo.*" keys,
    the rest as JSON: step, config, video shape, the optimizer's param groups and its
    per-parameter scalars (AdamW's 'step'), and the fp16 scaler state.
    """
    metadata = _check_metadata(metadata)
    state = tuner.state_dict()
    tensors = {f"trainable.{k}": v for k, v in state["trainable"].items()}
    scalars = {}
    for index, param_state in state["optimizer"]["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = _scalar_to_json(value)
    tensors["rng"] = state["rng"]
    extra = {
        "step": state["step"],
        "config": state["config"],
        "video_shape": state["video_shape"],
        "param_groups": state["optimizer"]["param_groups"],
        "optimizer_scalars": scalars,
    }
    if "scaler" in state:
        extra["scaler"] = state["scaler"]
    metadata[_FORMAT_KEY] = _CHECKPOINT_FORMAT
    metadata[_STATE_KEY] = json.dumps(extra)
    _atomic_save(tensors, path, metadata)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint of `save_checkpoint` into a `Tuner.load_state_dict` state (on the CPU),
    with the caller's strings under "metadata"."""
    tensors, metadata = _load(path, _CHECKPOINT_FORMAT)
    extra = json.loads(metadata.pop(_STATE_KEY))
    optimizer_state: dict[int, dict] = {}
    trainable = {}
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "trainable":
            trainable[rest] = value
        elif kind == "optimizer":
            index, _, name = rest.partition(".")
            optimizer_state.setdefault(int(index), {})[name] = value
    for index, values in extra["optimizer_scalars"].items():
        for name, value in values.items():
            optimizer_state.setdefault(int(index), {})[name] = _scalar_from_json(value)
    state = {
        "trainable": trainable,
        "optimizer": {"state": optimizer_state, "param_groups": extra["param_groups"]},
        "step": extra["step"],
        "rng": tensors["rng"],
        "config": extra["config"],
        "video_shape": extra["video_shape"],
        "metadata": metadata,
    }
    if "scaler" in extra:
        state["scaler"] = extra["scaler"]
    return state


def save_tuned_weights(video_unet, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write only the trainable tensors (keys as `trainable_state_dict()`) to safetensors,
    atomically, with the caller's strings as metadata (e.g. base model hash, frames,
    resolution, lambdas, steps)."""
    metadata = _check_metadata(metadata)
    metadata[_FORMAT_KEY] = _WEIGHTS_FORMAT
    _atomic_save(dict(video_unet.trainable_state_dict()), path, metadata)


def load_tuned_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict for `VideoUNet.load_trainable_state_dict`, the metadata strings given at save)."""
    return _load(path, _WEIGHTS_FORMAT)


# The temporary file of an atomic save: "<file name>.<8 hex digits>.tmp" beside the file.
TEMPORARY_SUFFIX_LENGTH = len(".01234567.tmp")


def temporary_files(path: str | os.PathLike) -> list[str]:
    """The temporary files that saves of `path` left behind (a killed process leaves them)."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(name) + r"\.[0-9a-f]{8}\.tmp")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if pattern.fullmatch(f)) if os.path.isdir(folder) else []


def _atomic_save(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str]) -> None:
    path = os.fspath(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # Same folder, so os.replace is a rename on one file system. Created with mode 0666 less the
    # umask, as any file the process writes (mkstemp's 0600 would make the saved file private).
    while True:
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _load(path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = os.fspath(path)
    with safe_open(path, framework="pt") as f:
        metadata = dict(f.metadata() or {})
    found = metadata.pop(_FORMAT_KEY, None)
    if found != expected_format:
        kinds = {_CHECKPOINT_FORMAT: ("a tuning checkpoint", "load_checkpoint"),
                 _WEIGHTS_FORMAT: ("tuned weights", "load_tuned_weights")}
        if found in kinds:
            raise ValueError(f"{path} holds {kinds[found][0]}: open it with {kinds[found][1]}")
        raise ValueError(f"{path} is not a SmoothVideo file ({kinds[expected_format][0]} expected)")
    return load_file(path), metadata


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"metadata must map strings to strings; convert {key!r}: {value!r} with str()")
        if key.startswith(_RESERVED_PREFIX):
            raise ValueError(f"metadata key {key!r} uses the reserved prefix {_RESERVED_PREFIX!r}; rename it")
    return metadata


def _scalar_to_json(value):
    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).removeprefix("torch."), "value": value.item()}
    return value


def _scalar_from_json(value):
    if isinstance(value, dict) and "tensor" in value:
        return torch.tensor(value["value"], dtype=getattr(torch, value["tensor"]))
    return value


# Devices whose fused AdamW kernel honours found_inf (skips the update on the device). MPS has a
# fused kernel that ignores it; others (DirectML, ...) may have none: torch's per-tensor AdamW there.
_FUSED_ADAMW_DEVICES = {"cuda", "cpu"}


def _adamw(parameters: list[torch.Tensor], config: TuneConfig, device: torch.device) -> tuple[torch.optim.AdamW, bool]:
    """AdamW with one fused kernel per step where that kernel can also skip a step on the device
    (CUDA, CPU); torch's per-tensor implementation elsewhere. Returns (optimizer, fused)."""
    fused = device.type in _FUSED_ADAMW_DEVICES
    optimizer = torch.optim.AdamW(
        parameters, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon, weight_decay=config.adam_weight_decay, fused=fused or None,
    )
    return optimizer, fused


def matmul_dtype(mixed_precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype a Tuner with this mixed_precision runs matmuls and convolutions in on `device`
    (float32 without autocast): the dtype to hold the frozen weights in (`VideoUNet.placed`).
    Without autocast that turns half-precision weights (ComfyUI's on a GPU without bf16) into
    the float32 ones the Tuner then needs."""
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"unknown mixed_precision {mixed_precision!r}; choose one of {', '.join(MIXED_PRECISION)}")
    precision = _resolve_precision(mixed_precision, torch.device(device))
    return _AUTOCAST_DTYPES.get(precision, torch.float32)


def _resolve_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        if device.type != "cuda":
            return "no"
        # Hardware bf16 only (Ampere and later): torch also says yes where it is emulated (T4,
        # V100, RTX 20xx), and emulated bf16 matmuls are slower than float32 ones.
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16"
        # Volta and Turing have fp16 tensor cores: fp16 autocast with a gradient scaler, as
        # Tune-A-Video itself trained. Older cards compute fp16 slowly: float32.
        return "fp16" if torch.cuda.get_device_capability(device) >= (7, 0) else "no"
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bfloat16 support: use mixed_precision 'fp16' or 'no'")
    return requested


def _require_positive(name: str, value, hint: str) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r} ({hint})")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_CHECKPOINT_UNET_PREFIX = "model.diffusion_model."


def unet_fingerprint(unet_state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash that tells base models apart, cheap at SD1.5 size: every key and shape, and
    the values of the first and last tensors and of the time embedding's first layer (tuned
    weights name the model they fit). Keys as ComfyUI's UNet state dict gives them, or with the
    checkpoint's `model.diffusion_model.` prefix (then other keys are ignored).

    The values are hashed rounded to fp16, so that one checkpoint file gives one fingerprint
    whether ComfyUI holds its UNet in float32 (a CPU) or in fp16 (a GPU): weights tuned on one
    machine load on the other. (Held in bf16 or fp8, an fp32 or fp16 file fingerprints apart.)"""
    sd = unet_state_dict
    if any(k.startswith(_CHECKPOINT_UNET_PREFIX) for k in sd):
        sd = {k[len(_CHECKPOINT_UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(_CHECKPOINT_UNET_PREFIX)}
    digest = hashlib.sha256()
    names = sorted(sd)
    for name in names:
        digest.update(f"{name}:{tuple(sd[name].shape)};".encode())
    for name in (names[0], names[-1], "time_embed.0.weight"):
        if name in sd:
            values = sd[name].detach().to("cpu", torch.float16)
            digest.update(values.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
