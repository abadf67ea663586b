"""The video layers of Tune-A-Video, on plain torch: what both video models share.

Two video models run them. The core's own (`inflate`, on a diffusers `UNet2DConditionModel`)
and the ComfyUI-native one (`nodes/video_patches.py`: patches on ComfyUI's own UNet). Both
hold the frames of a video in the batch, `(b f)` consecutive; one `FrameLayout` per model call
tells every layer how many frames a video has. The method lives here once:

- `frame_attention`: self-attention whose keys and values come from anchor frames of the
  same video, computed from the projected q, k, v (what ComfyUI's attn1 replacement receives).
- `TemporalAttention` and `temporal_residual`: attention across the frames at each token
  position after a transformer block, `h + attn_temp(norm_temp(h))`, Tune-A-Video's placement.
- `video_group_norm`: a GroupNorm whose statistics span all frames of a video, as
  Tune-A-Video's ResNet blocks (nn.GroupNorm on `(b, c, f, h, w)`), instead of each frame.
- `temporal_state`: the deterministic initial weights of one temporal layer, by mode.

Wu et al., "Tune-A-Video", ICCV 2023 (showlab/Tune-A-Video, `tuneavideo/models/`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ATTENTION_MODES", "FRAME_ATTENTION_MODES", "FrameGroupNormHooks", "FrameLayout", "GROUP_NORM_MODES", "KEY_FRAME",
    "TEMPORAL_INIT_SEED", "TemporalAttention", "forward_in_chunks", "frame_attention", "key_frame_temporal", "key_frame_temporal_state",
    "require_key_frame", "sdpa_attention", "temporal_residual", "temporal_state", "video_group_norm",
]

ATTENTION_MODES = ("sparse_causal", "cross_frame")  # Inflate UNet's choices (Tune-A-Video, Text2Video-Zero)
# ControlVideo's key-frame attention: every frame attends to one chosen frame of its video.
KEY_FRAME = "key_frame"
FRAME_ATTENTION_MODES = (*ATTENTION_MODES, KEY_FRAME)
# "video": Tune-A-Video as published, GroupNorm over all frames of a video. "per_frame": each
# frame alone, the 2D model exactly at init (AnimateDiff's way).
GROUP_NORM_MODES = ("video", "per_frame")
TEMPORAL_INIT_SEED = 2023

# attention(q, k, v, heads) -> out: q (B, Lq, heads * d), k and v (B, Lk, heads * d), out like q.
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class FrameLayout:
    """Frames per video in the batch of the current model call (batch = videos * num_frames)."""

    num_frames: int = 1

    def videos_in(self, batch: int) -> int:
        """Number of videos b in a batch of (b f) frames."""
        if batch % self.num_frames:
            raise ValueError(f"batch of {batch} is not a whole number of {self.num_frames}-frame videos")
        return batch // self.num_frames


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax attention with scale 1/sqrt(d) (PyTorch's fused kernels where it has them)."""

    def split(x):  # (B, L, heads * d) -> (B, heads, L, d)
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).flatten(2).to(q.dtype)


def frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, num_frames: int,
                    mode: str, attention: Attention | None = None, key_frame: int = 0) -> torch.Tensor:
    """Self-attention of every frame over the keys/values of its video's anchor frames.

    `sparse_causal` (Tune-A-Video): frame i attends to frames [0, max(i-1, 0)], so frame 0
    attends to itself twice, as Tune-A-Video does. `cross_frame` (Text2Video-Zero): every frame
    attends to frame 0. `key_frame` (ControlVideo): every frame attends to frame `key_frame`
    (cross_frame is key_frame 0). Queries stay per frame.

    Args:
        q, k, v: ((b f), n, heads * d), the projected tokens of every frame.
        heads: attention heads.
        num_frames: f.
        mode: one of `FRAME_ATTENTION_MODES`.
        attention: the attention kernel (`sdpa_attention` by default; ComfyUI's optimised one
            in the ComfyUI-native model).
        key_frame: the frame every frame attends to in `key_frame` mode, 0 <= key_frame < f.

    Returns:
        ((b f), n, heads * d), before the output projection.
    """
    if mode not in FRAME_ATTENTION_MODES:
        raise ValueError(f"attention mode {mode!r}; choose one of {FRAME_ATTENTION_MODES}")
    bf = q.shape[0]
    b = FrameLayout(num_frames).videos_in(bf)
    key, value = k.unflatten(0, (b, num_frames)), v.unflatten(0, (b, num_frames))  # (b, f, n, inner)
    anchor = 0
    if mode == KEY_FRAME:
        require_key_frame(key_frame, num_frames)
        anchor = key_frame
    first = torch.full((num_frames,), anchor, dtype=torch.long, device=k.device)
    if mode == "sparse_causal":
        previous = (torch.arange(num_frames, device=k.device) - 1).clamp(min=0)
        key = torch.cat([key[:, first], key[:, previous]], dim=2)  # (b, f, 2n, inner)
        value = torch.cat([value[:, first], value[:, previous]], dim=2)
    else:
        key, value = key[:, first], value[:, first]
    return (attention or sdpa_attention)(q, key.flatten(0, 1), value.flatten(0, 1), heads)


def require_key_frame(key_frame: int, num_frames: int) -> None:
    """The key frame is a frame of the video: 0 <= key_frame < num_frames."""
    if not 0 <= key_frame < num_frames:
        raise ValueError(
            f"key_frame {key_frame} is not a frame of this {num_frames}-frame video (frames 0 to {num_frames - 1}): "
            f"set the ControlVideo node's key_frame below {num_frames}"
        )


class TemporalAttention(nn.Module):
    """Self-attention across the frames at one token position: Tune-A-Video's `attn_temp`.

    The parameter names are Tune-A-Video's (`to_q`, `to_k`, `to_v`, `to_out.0`), so tuned weights
    keep its key names. `operations` makes the layers (torch.nn by default; ComfyUI passes its
    own, whose weights it casts and streams like the rest of the model).
    """

    def __init__(self, dim: int, heads: int, bias: bool = False, dtype=None, device=None, operations=nn):
        super().__init__()
        if dim % heads:
            raise ValueError(f"{dim} channels do not split into {heads} attention heads")
        self.heads = heads
        self.to_q = operations.Linear(dim, dim, bias=bias, dtype=dtype, device=device)
        self.to_k = operations.Linear(dim, dim, bias=bias, dtype=dtype, device=device)
        self.to_v = operations.Linear(dim, dim, bias=bias, dtype=dtype, device=device)
        self.to_out = nn.ModuleList([operations.Linear(dim, dim, dtype=dtype, device=device), nn.Dropout(0.0)])

    def forward(self, h: torch.Tensor, attention: Attention | None = None) -> torch.Tensor:
        """h: (N, f, c), N sequences of f frames -> (N, f, c)."""
        out = (attention or sdpa_attention)(self.to_q(h), self.to_k(h), self.to_v(h), self.heads)
        return self.to_out[1](self.to_out[0](out))


def temporal_residual(h: torch.Tensor, num_frames: int, norm_temp: nn.Module, attn_temp: TemporalAttention,
                      attention: Attention | None = None) -> torch.Tensor:
    """`h + attn_temp(norm_temp(h))` across frames: h ((b f), n, c) is seen as ((b n), f, c)."""
    bf, n, c = h.shape
    b = FrameLayout(num_frames).videos_in(bf)
    seq = h.reshape(b, num_frames, n, c).transpose(1, 2).reshape(b * n, num_frames, c)
    seq = seq + attn_temp(norm_temp(seq), attention)
    return seq.reshape(b, n, num_frames, c).transpose(1, 2).reshape(bf, n, c)


def key_frame_temporal(n: torch.Tensor, num_frames: int, attn_temp: TemporalAttention, conv_temp: nn.Module,
                       attention: Attention | None = None) -> torch.Tensor:
    """ControlVideo's temporal branch, `conv_temp(attn_temp(n))` across frames, which its
    transformer block adds to the hidden states right after the self-attention's residual (in
    parallel with attn1, on the same norm1 output n; no norm of its own).

    n: ((b f), tokens, c), a block's norm1 output. conv_temp is ControlVideo's zero-initialised
    1x1 Conv2d(c, c) over ((b f), c, h, w): per token, so the tokens run as ((b f), c, tokens, 1).
    Returns ((b f), tokens, c), the term to add."""
    bf, t, c = n.shape
    b = FrameLayout(num_frames).videos_in(bf)
    seq = n.reshape(b, num_frames, t, c).transpose(1, 2).reshape(b * t, num_frames, c)
    out = attn_temp(seq, attention).reshape(b, t, num_frames, c).transpose(1, 2).reshape(bf, t, c)
    return conv_temp(out.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)


def temporal_state(dim: int, heads: int, index: int, group_norm: str, bias: bool = False) -> dict[str, torch.Tensor]:
    """Initial float32 weights of the `index`-th temporal layer (in the UNet's down, mid, up
    order), keyed `attn_temp.*` and `norm_temp.*` as Tune-A-Video names them.

    torch's default init drawn from a fixed seed, so inflating the same model twice gives the same
    model whatever the global RNG holds. Tune-A-Video zeroes only `attn_temp.to_out.0.weight` (its
    bias keeps the default init): that is the "video" group-norm mode, Tune-A-Video as published.
    "per_frame" zeroes the bias too, so the temporal branch adds nothing at init and the model is
    the 2D model exactly.
    """
    if group_norm not in GROUP_NORM_MODES:
        raise ValueError(f"group_norm {group_norm!r}; choose one of {GROUP_NORM_MODES}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TEMPORAL_INIT_SEED + index)
        attn = TemporalAttention(dim, heads, bias=bias)
    norm = nn.LayerNorm(dim)
    nn.init.zeros_(attn.to_out[0].weight)
    if group_norm == "per_frame":
        nn.init.zeros_(attn.to_out[0].bias)
    state = {f"attn_temp.{k}": v for k, v in attn.state_dict().items()}
    state.update({f"norm_temp.{k}": v for k, v in norm.state_dict().items()})
    return {k: v.detach() for k, v in state.items()}


def key_frame_temporal_state(attn1: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ControlVideo's initial temporal weights of one block: `attn_temp` a copy of the block's
    self-attention (attn1's to_q, to_k, to_v, to_out.0 tensors, keyed as there), `conv_temp`
    (a 1x1 Conv2d(c, c)) all zero, weight and bias, so the untuned model adds nothing."""
    names = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")
    missing = [name for name in names if name not in attn1]
    if missing:
        raise ValueError(f"the self-attention's {missing} are needed for ControlVideo's temporal attention")
    optional = ("to_q.bias", "to_k.bias", "to_v.bias")  # SD has none; a UNet with them copies them too
    state = {f"attn_temp.{name}": attn1[name].detach().float().clone() for name in (*names, *optional) if name in attn1}
    c = attn1["to_out.0.weight"].shape[0]
    state["conv_temp.weight"] = torch.zeros(c, c, 1, 1)
    state["conv_temp.bias"] = torch.zeros(c)
    return state


def video_group_norm(x: torch.Tensor, num_frames: int, norm: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`norm` (a GroupNorm) with statistics over all frames of each video, as nn.GroupNorm on
    (b, c, f, h, w) in Tune-A-Video: x ((b f), c, h, w) runs as (b, c, f*h, w), which has the
    same groups, the same per-channel affine and the same elements per group."""
    return _from_video(norm(_to_video(x, num_frames)), num_frames)


def _to_video(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    bf, c, h, w = x.shape
    b = FrameLayout(num_frames).videos_in(bf)
    return x.reshape(b, num_frames, c, h, w).transpose(1, 2).reshape(b, c, num_frames * h, w)


def _from_video(y: torch.Tensor, num_frames: int) -> torch.Tensor:
    b, c, fh, w = y.shape
    h = fh // num_frames
    return y.reshape(b, c, num_frames, h, w).transpose(1, 2).reshape(b * num_frames, c, h, w)


class FrameGroupNormHooks:
    """`video_group_norm` as a forward pre-hook and a forward hook on a GroupNorm module, so the
    module itself (its weights, its dtype casts, whatever wraps them) stays as it is.

    Register both on the module: `module.register_forward_pre_hook(hooks.before)` and
    `module.register_forward_hook(hooks.after)`; removing the two handles undoes it.
    """

    def __init__(self, layout: FrameLayout):
        self.layout = layout

    def before(self, module: nn.Module, args: tuple) -> tuple:
        return (_to_video(args[0], self.layout.num_frames), *args[1:])

    def after(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return _from_video(output, self.layout.num_frames)


def forward_in_chunks(
    fn: Callable[..., torch.Tensor], per_frame: Sequence[torch.Tensor], num_frames: int, chunk_size: int
) -> torch.Tensor:
    """Runs `fn` on chunks of at most `chunk_size` frames of every video, each chunk led by frame 0.

    Text2Video-Zero's way to fit long videos in memory: the first chunk is frames
    [0, chunk_size); every later chunk is frame 0 followed by the next chunk_size - 1 frames,
    so frame 0 is there for the frames to attend to, and its output from that chunk is
    dropped. With cross-frame attention to frame 0 and nothing else mixing frames (no
    temporal layers) the result equals one call on the whole video; otherwise it does not.

    Args:
        fn: `fn(*chunks, n) -> ((g n), ...)`, called with the tensors of `per_frame` cut to a
            chunk of n frames per group, e.g. `VideoUNet.forward_frames`.
        per_frame: tensors ((g f), ...) in one batch layout: g groups (videos, or ComfyUI's
            cond/uncond copies of one video: InstructPix2Pix's dual CFG runs 3) of f
            consecutive frames each, e.g. latents, timesteps and text contexts.
        num_frames: f.
        chunk_size: frames per call, at least 2 (frame 0 and one more).

    Returns:
        ((g f), ...): fn's output for every frame, in the input's order.
    """
    if chunk_size < 2:
        raise ValueError(f"chunk_size must be at least 2 (frame 0 and one more frame per chunk), got {chunk_size}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    batch = per_frame[0].shape[0]
    if any(t.shape[0] != batch for t in per_frame) or batch % num_frames:
        sizes = [t.shape[0] for t in per_frame]
        raise ValueError(f"per-frame tensors of batch sizes {sizes} are not whole groups of {num_frames} frames")
    if num_frames <= chunk_size:
        return fn(*per_frame, num_frames)
    groups = batch // num_frames
    device = per_frame[0].device
    starts = [0, *range(chunk_size, num_frames, chunk_size - 1)]
    pieces = []
    for start, end in zip(starts, [*starts[1:], num_frames]):
        anchored = start > 0
        frames = torch.arange(start, end, device=device)
        if anchored:
            frames = torch.cat([frames.new_zeros(1), frames])
        index = (torch.arange(groups, device=device)[:, None] * num_frames + frames).flatten()
        out = fn(*(t.index_select(0, index.to(t.device)) for t in per_frame), len(frames))
        pieces.append(out.unflatten(0, (groups, len(frames)))[:, int(anchored):])
    return torch.cat(pieces, dim=1).flatten(0, 1)
