"""Tune-A-Video inflation of a diffusers SD1.x `UNet2DConditionModel` into a video UNet: the
core's own video model, for use outside ComfyUI and as the reference of the ComfyUI-native one.

The frames of a video stay in the batch: the UNet runs on `(b f) c h w` latents with one
timestep and one text context per frame, so every 2D layer works unchanged. Three things
make it a video model (Wu et al., "Tune-A-Video", ICCV 2023), each from `video_layers`:

- Sparse-causal self-attention: an attention processor on every transformer block's
  `attn1` lets frame i attend to the keys/values of frames 0 and i-1 ("sparse_causal");
  "cross_frame" (Text2Video-Zero) uses frame 0 only.
- Temporal attention: every `BasicTransformerBlock` gets `attn_temp` + `norm_temp`, run by
  a forward hook on the block output (after its feed-forward) across the frames at each
  spatial position, `h + attn_temp(norm_temp(h))`. Its output projection's weight starts
  at zero. Training-free use (Text2Video-Zero) inflates with `temporal=False`: frame
  attention only, nothing to train.
- Group norm ("video", Tune-A-Video as published): the ResNet blocks' GroupNorms and the
  final one normalise over all frames of a video. "per_frame" leaves them per frame and
  zeroes the temporal output bias too, so a fresh inflation is the 2D model per frame.

Long videos can run in chunks anchored on frame 0 (`forward_in_chunks`, Text2Video-Zero's
memory saving); with cross-frame attention and no temporal layers that changes nothing but
the memory.

Everything goes through diffusers' public seams (attention processors, forward hooks); no
diffusers code is copied or patched globally. One `FrameLayout` object per inflated UNet
tells the processors and hooks how many frames the batch holds.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator, Sequence

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from . import checks
from .video_layers import (
    ATTENTION_MODES, GROUP_NORM_MODES, FrameGroupNormHooks, FrameLayout, TemporalAttention, forward_in_chunks,
    frame_attention, temporal_residual, temporal_state,
)

__all__ = [
    "ATTENTION_MODES", "FrameAttnProcessor", "FrameLayout", "GROUP_NORM_MODES", "VideoUNet", "forward_in_chunks",
    "inflate_unet", "is_inflated", "video_group_norms",
]

# Layers whose weights autocast casts to its lower precision at every call (linear and the
# convolutions are on both the CUDA and the CPU lists); `VideoUNet.placed` holds them in it.
_MATMUL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class FrameAttnProcessor:
    """diffusers attention processor for `attn1`: `video_layers.frame_attention` between the
    block's own projections. Otherwise as diffusers' `AttnProcessor2_0` for SD1.x `attn1` (no
    masks, group or spatial norm, qk-norm; the default 1/sqrt(d) scale)."""

    def __init__(self, layout: FrameLayout, mode: str):
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode {mode!r}; choose one of {ATTENTION_MODES}")
        self.layout = layout
        self.mode = mode

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states: ((b f), n, c) tokens of every frame -> same shape."""
        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError("frame attention replaces self-attention only, without masks")
        if hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            raise NotImplementedError("frame attention expects SD1.x-style attn1 on (batch, tokens, channels)")
        if attn.norm_q is not None or attn.norm_k is not None:
            raise NotImplementedError("frame attention does not handle qk-norm")
        query = attn.to_q(hidden_states)
        if abs(attn.scale - (query.shape[-1] // attn.heads) ** -0.5) > 1e-9:
            raise NotImplementedError("frame attention uses the default 1/sqrt(head dim) attention scale")
        out = frame_attention(query, attn.to_k(hidden_states), attn.to_v(hidden_states), attn.heads,
                              self.layout.num_frames, self.mode)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class TemporalAttentionHook:
    """Forward hook on a `BasicTransformerBlock`: `video_layers.temporal_residual` on its output."""

    def __init__(self, layout: FrameLayout):
        self.layout = layout

    def __call__(self, block: BasicTransformerBlock, args, hidden_states: torch.Tensor) -> torch.Tensor:
        return temporal_residual(hidden_states, self.layout.num_frames, block.norm_temp, block.attn_temp)


def is_inflated(unet: nn.Module) -> bool:
    """Whether `unet` is already inflated: temporal attention (`attn_temp`) on its transformer
    blocks, or frame attention on their `attn1` (an inflation with `temporal=False`)."""
    return any(
        hasattr(block, "attn_temp") or isinstance(block.attn1.processor, FrameAttnProcessor)
        for block in _transformer_blocks(unet)
    )


def inflate_unet(unet: UNet2DConditionModel, attention: str = "sparse_causal", temporal: bool = True,
                 group_norm: str | None = None) -> "VideoUNet":
    """Turn a 2D SD1.x UNet into a video UNet, in place, and wrap it.

    Args:
        unet: diffusers UNet; it is modified (new submodules, processors and hooks) and
            becomes `VideoUNet.unet`. New layers take the dtype and device of each block.
        attention: self-attention mode, one of `ATTENTION_MODES`.
        temporal: add the temporal attention layers (Tune-A-Video, to be tuned). False gives
            a training-free video UNet with frame attention only (Text2Video-Zero with
            "cross_frame"): no new parameters, no hook, and no trainable set.
        group_norm: "video" (Tune-A-Video as published: the ResNet blocks' GroupNorms and the
            final one normalise over all frames of a video) or "per_frame" (each frame alone;
            with the temporal output projection zero, weight and bias, the 2D model exactly).
            None: "video" with temporal layers (Tune-A-Video), "per_frame" without
            (Text2Video-Zero changes nothing but the self-attention).
    """
    if is_inflated(unet):
        raise ValueError("UNet is already inflated; inflate a fresh 2D UNet")
    if group_norm is None:
        group_norm = "video" if temporal else "per_frame"
    if group_norm not in GROUP_NORM_MODES:
        raise ValueError(f"group_norm {group_norm!r}; choose one of {GROUP_NORM_MODES}")
    blocks = _transformer_blocks(unet)
    if not blocks:
        raise ValueError("UNet has no transformer blocks to inflate")
    layout = FrameLayout()
    if temporal:
        _add_temporal_attention(blocks, layout, group_norm)
    if group_norm == "video":
        hooks = FrameGroupNormHooks(layout)
        for norm in video_group_norms(unet):
            norm.register_forward_pre_hook(hooks.before)
            norm.register_forward_hook(hooks.after)
    video_unet = VideoUNet(unet, layout, group_norm)
    video_unet.set_attention_mode(attention)
    return video_unet


def video_group_norms(unet: UNet2DConditionModel) -> list[nn.GroupNorm]:
    """The GroupNorms Tune-A-Video runs over all frames: every ResNet block's `norm1` and `norm2`
    (its ResnetBlock3D applies them to (b, c, f, h, w)) and the UNet's `conv_norm_out`. The
    transformers' own norm stays per frame (Transformer3DModel folds frames into the batch first)."""
    resnets = [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    return [norm for r in resnets for norm in (r.norm1, r.norm2)] + [unet.conv_norm_out]


def _add_temporal_attention(blocks: list[BasicTransformerBlock], layout: FrameLayout, group_norm: str) -> None:
    """`attn_temp` + `norm_temp` on every block, run by a forward hook after the block."""
    for index, block in enumerate(blocks):
        attn1 = block.attn1
        dim = attn1.query_dim
        like = {"dtype": attn1.to_q.weight.dtype, "device": attn1.to_q.weight.device}
        # The same head split and bias setting as the block's own self-attention.
        bias = attn1.to_q.bias is not None
        block.attn_temp = TemporalAttention(dim, attn1.heads, bias=bias, **like)
        block.norm_temp = nn.LayerNorm(dim, **like)
        state = temporal_state(dim, attn1.heads, index, group_norm, bias=bias)
        with torch.no_grad():
            for name, tensor in itertools.chain(block.attn_temp.named_parameters("attn_temp"),
                                                block.norm_temp.named_parameters("norm_temp")):
                tensor.copy_(state[name])
        block.register_forward_hook(TemporalAttentionHook(layout))


class VideoUNet(nn.Module):
    """An inflated diffusers UNet (`.unet`) and the `FrameLayout` its processors share.

    State dict keys of the trainable set are relative to `.unet`, as in Tune-A-Video
    checkpoints (`down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight`).
    """

    def __init__(self, unet: UNet2DConditionModel, layout: FrameLayout, group_norm: str = "video"):
        super().__init__()
        self.unet = unet
        self.layout = layout
        self.group_norm = group_norm

    def forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor | float, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """Noise prediction for whole videos.

        Args:
            latents: (b, f, c, h, w).
            timesteps: (b,) one per video, or a scalar for all.
            encoder_hidden_states: (b, n, d) one text context per video.

        Returns:
            (b, f, c_out, h, w).
        """
        b, f = latents.shape[:2]
        t = torch.as_tensor(timesteps, device=latents.device).expand(b).repeat_interleave(f)
        context = encoder_hidden_states.repeat_interleave(f, dim=0)
        return self.forward_frames(latents.flatten(0, 1), t, context, f).unflatten(0, (b, f))

    def forward_frames(
        self, x: torch.Tensor, timesteps: torch.Tensor, encoder_hidden_states: torch.Tensor, num_frames: int
    ) -> torch.Tensor:
        """Noise prediction with frames already in the batch, as ComfyUI calls a model.

        Args:
            x: ((b f), c, h, w), the frames of each video consecutive.
            timesteps: ((b f),) per frame.
            encoder_hidden_states: ((b f), n, d) per frame.
            num_frames: f.

        Returns:
            ((b f), c_out, h, w).
        """
        self.layout.num_frames = num_frames
        self.layout.videos_in(x.shape[0])  # fail here, not deep inside the UNet
        return self.unet(x, timesteps, encoder_hidden_states=encoder_hidden_states).sample

    def set_attention_mode(self, mode: str) -> None:
        """Self-attention of every transformer block: one of `ATTENTION_MODES`."""
        processor = FrameAttnProcessor(self.layout, mode)
        for block in _transformer_blocks(self.unet):
            block.attn1.set_processor(processor)

    @property
    def in_channels(self) -> int:
        """Latent channels the UNet takes."""
        return self.unet.config.in_channels

    @property
    def has_temporal(self) -> bool:
        """Whether the temporal attention layers are there (False: inflated with `temporal=False`)."""
        return any(hasattr(block, "attn_temp") for block in _transformer_blocks(self.unet))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Tune-A-Video's trainable set: the modules whose names end in `attn1.to_q`, `attn2.to_q`
        and `attn_temp` (`norm_temp` stays frozen, as in Tune-A-Video).

        A training-free inflation (`temporal=False`) has none: asking for it is an error, and
        so are the methods built on it (mark_trainable, the trainable state dict, fork).
        """
        if not self.has_temporal:
            raise ValueError(
                "this video UNet has no temporal attention (inflated with temporal=False for training-free "
                "use, e.g. Text2Video-Zero cross-frame attention), so it has nothing to tune: tune a model "
                "inflated with temporal=True (the Inflate UNet node)"
            )
        modules = [
            m
            for block in _transformer_blocks(self.unet)
            for m in (block.attn1.to_q, block.attn2.to_q, block.attn_temp)
        ]
        return [p for m in modules for p in m.parameters()]

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the trainable set (an error where there is none, as for
        `trainable_parameters`)."""
        trainable = {id(p) for p in self.trainable_parameters()}
        return [p for p in self.parameters() if id(p) not in trainable]

    def mark_trainable(self) -> None:
        """requires_grad on the trainable set only; everything else is frozen."""
        self.unet.requires_grad_(False)
        for p in self.trainable_parameters():
            p.requires_grad_(True)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors (detached, shared storage), keyed relative to `.unet`."""
        trainable = {id(p) for p in self.trainable_parameters()}
        return {name: p.detach() for name, p in self.unet.named_parameters() if id(p) in trainable}

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy exactly the trainable set in; missing or unexpected keys are an error."""
        own = self.trainable_state_dict()
        checks.require_matching_state(own, state_dict)
        with torch.no_grad():
            for k, v in state_dict.items():
                own[k].copy_(v)

    def fork(self) -> "VideoUNet":
        """A copy that owns its trainable tensors and shares every other tensor with this one.

        Tuning a fork leaves this model as it was (ComfyUI models are never mutated) without
        a second copy of the frozen ~800M parameters at SD1.5 size.
        """
        shared = {id(t): t for t in [*self.frozen_parameters(), *self.buffers()]}
        return copy.deepcopy(self, memo=shared)

    @contextlib.contextmanager
    def placed(self, device: torch.device | str, matmul_dtype: torch.dtype | None = None) -> Iterator["VideoUNet"]:
        """Within the block, the whole model is on `device`, for tuning there.

        The trainable parameters (this module's own: a fork's) move to `device` and back on
        exit. Every other tensor is left where it is, untouched, and a copy on `device`
        stands in for it inside the block: the originals may be shared with the model this
        one was forked from (ComfyUI's, on its offload device), which must not move or change.
        With a `matmul_dtype` (`tune.matmul_dtype`: the autocast dtype, bf16 under the Tuner's
        "auto" on a GPU; float32 without autocast), the frozen weights and biases of linear
        and convolution layers are copied in it and the other floating tensors (norms) in
        float32, the dtypes autocast casts them to at every call; without one, every tensor
        keeps its dtype. Autocast would otherwise cast every frozen weight again at each
        forward and keep the casts alive for the backward pass (~1.6 GB at SD1.5 size); held
        in those dtypes they give the same numbers without either. A tensor already on
        `device` in its target dtype is used as it is.

        Use a Tuner made inside the block only inside it: on exit the copies are dropped and
        the trainables are back where they were.
        """
        device = torch.device(device)
        trainable = {id(p): p for p in self.trainable_parameters()} if self.has_temporal else {}
        moved: list[tuple[nn.Parameter, torch.device]] = []
        swapped: list[tuple[dict, str, torch.Tensor]] = []
        copies: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        try:
            with torch.inference_mode(False), torch.no_grad():
                for p in trainable.values():
                    if p.device != device:
                        moved.append((p, p.device))
                        p.data = p.data.to(device)
                for module in self.modules():
                    # Under autocast the norms run in float32 (CUDA casts their weights to it).
                    target = matmul_dtype if isinstance(module, _MATMUL_LAYERS) else torch.float32
                    for store in (module._parameters, module._buffers):
                        for name, tensor in list(store.items()):
                            if tensor is None or id(tensor) in trainable:
                                continue
                            recast = matmul_dtype is not None and tensor.is_floating_point()
                            dtype = target if recast else tensor.dtype
                            if tensor.device == device and tensor.dtype == dtype:
                                continue
                            key = (id(tensor), dtype)
                            if key not in copies:  # a tensor shared by two layers stays shared
                                data = tensor.detach().to(device, dtype, copy=True)
                                copies[key] = nn.Parameter(data, False) if isinstance(tensor, nn.Parameter) else data
                            swapped.append((store, name, tensor))
                            store[name] = copies[key]
            yield self
        finally:
            for store, name, original in reversed(swapped):
                store[name] = original
            copies.clear()
            with torch.inference_mode(False), torch.no_grad():
                for p, where in moved:
                    p.data = p.data.to(where)

    def enable_gradient_checkpointing(self, blocks: Sequence[str] | None = None) -> None:
        """diffusers' checkpointing calls each block as a module, so the temporal hook is recomputed too.

        Args:
            blocks: checkpoint only these parts of `.unet` (e.g. ["down_blocks.0", "up_blocks.3"],
                the full-resolution level, where most activations are); None: all of them.
        """
        self.unet.enable_gradient_checkpointing()
        if blocks is None:
            return
        blocks = list(blocks)
        flagged = {name: m for name, m in self.unet.named_modules() if name and hasattr(m, "gradient_checkpointing")}

        def inside(name: str, block: str) -> bool:
            return name == block or name.startswith(block + ".")

        # A name must hold something diffusers checkpoints (a resnet alone, or conv_in, would not).
        unknown = [b for b in blocks if not any(inside(name, b) for name in flagged)]
        if unknown:
            raise ValueError(
                f"nothing to checkpoint in {', '.join(unknown)}: name UNet blocks such as down_blocks.0, mid_block, up_blocks.3"
            )
        for name, module in flagged.items():
            module.gradient_checkpointing = any(inside(name, b) for b in blocks)


def _transformer_blocks(unet: nn.Module) -> list[BasicTransformerBlock]:
    """The transformer blocks in the order the UNet runs them (down, mid, up; diffusers registers
    its up blocks before the mid block), the order of ComfyUI's UNet too: the temporal layers'
    seeded init and the trainables' order are the same on both video models."""
    part_order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    named = [(name, m) for name, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]
    named.sort(key=lambda item: part_order.get(item[0].split(".")[0], 1))  # stable within a part
    return [m for _, m in named]
