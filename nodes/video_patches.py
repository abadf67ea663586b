"""The video model as patches on ComfyUI's own UNet (no second UNet, no diffusers).

A video MODEL is a clone of the user's MODEL carrying, under the key "smoothvideo":

- an attn1 replacement on every transformer block (`set_model_attn1_replace`): ComfyUI hands
  it the projected q, k, v, and `video_layers.frame_attention` runs with ComfyUI's optimised
  attention (and any `optimized_attention_override` another node sets);
- a DIFFUSION_MODEL wrapper that reads the frame layout of each UNet call (the batch holds
  `len(cond_or_uncond)` videos of consecutive frames) and, for Cross-frame Attention, runs long
  videos in chunks led by frame 0;
- an injection (`PatcherInjection`), applied by ComfyUI after it loads the weights and removed
  before it touches them again, that hooks the temporal attention after each transformer
  block's feed-forward and, for Tune-A-Video's group norm, the ResNet blocks' GroupNorms;
- the temporal layers as an additional model, so ComfyUI loads, offloads and casts their
  weights with the UNet's (ComfyUI's own layer types: they stream under low VRAM too).

The checkpoint's model is never changed outside a load of the video MODEL, and every other
patch (LoRA, PAG, FreeU, ControlNet) acts on ComfyUI's UNet as on the plain model.
"""

from __future__ import annotations

import functools

import torch

import comfy.ldm.modules.attention
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.utils
from comfy.ldm.modules.attention import BasicTransformerBlock
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

from ..smooth_core import video_layers

KEY = "smoothvideo"
# The UNet's parts that hold transformer blocks, with the name ComfyUI's transformer_options["block"] gives them.
_BLOCK_LISTS = (("input", "input_blocks"), ("middle", "middle_block"), ("output", "output_blocks"))


def comfy_attention(q, k, v, heads, transformer_options=None):
    """ComfyUI's optimised attention (chosen at its start-up), with the call's options."""
    options = {} if transformer_options is None else transformer_options
    return comfy.ldm.modules.attention.optimized_attention(
        q, k, v, heads, attn_precision=options.get("attn_precision"), transformer_options=options
    )


def transformer_sites(diffusion_model) -> list[tuple[str, tuple[str, int], BasicTransformerBlock]]:
    """Every transformer block of a ComfyUI UNet in the UNet's down, mid, up order:
    (its path, e.g. "input_blocks.1.1.transformer_blocks.0"; the key its attn1 replacement
    is set under, e.g. ("input", 1); the block)."""
    sites = []
    for block_name, attribute in _BLOCK_LISTS:
        part = getattr(diffusion_model, attribute, None)
        if part is None:
            continue
        numbered = enumerate(part) if block_name != "middle" else [(0, part)]
        for number, container in numbered:
            prefix = attribute if block_name == "middle" else f"{attribute}.{number}"
            for name, module in container.named_modules():
                if isinstance(module, BasicTransformerBlock):
                    sites.append((f"{prefix}.{name}", (block_name, number), module))
    return sites


def video_group_norms(diffusion_model) -> list[torch.nn.Module]:
    """The GroupNorms Tune-A-Video runs over all frames, in ComfyUI's names: every ResBlock's
    `in_layers[0]` and `out_layers[0]` (diffusers' norm1, norm2) and the UNet's `out[0]`
    (conv_norm_out); the transformers' own norm stays per frame."""
    resnets = [m for m in diffusion_model.modules() if isinstance(m, ResBlock)]
    return [norm for r in resnets for norm in (r.in_layers[0], r.out_layers[0])] + [diffusion_model.out[0]]


def diffusers_block_names(model, paths: list[str]) -> list[str]:
    """Tune-A-Video's (diffusers') name of each transformer block path, e.g.
    "input_blocks.1.1.transformer_blocks.0" -> "down_blocks.0.attentions.0.transformer_blocks.0"."""
    key_map = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    suffix = ".attn1.to_q.weight"
    by_path = {ldm[: -len(suffix)]: name[: -len(suffix)] for name, ldm in key_map.items() if ldm.endswith(suffix)}
    missing = [path for path in paths if path not in by_path]
    if missing:
        raise ValueError(f"no diffusers name for the transformer blocks {missing[:3]} of this UNet")
    return [by_path[path] for path in paths]


TUNE_A_VIDEO, CONTROLVIDEO = "tune_a_video", "controlvideo"  # the video models' designs


class TemporalBlock(torch.nn.Module):
    """Tune-A-Video's `norm_temp` and `attn_temp` of one transformer block."""

    def __init__(self, dim: int, heads: int, bias: bool, operations):
        super().__init__()
        self.norm_temp = operations.LayerNorm(dim)
        self.attn_temp = video_layers.TemporalAttention(dim, heads, bias=bias, operations=operations)


class KeyFrameTemporalBlock(torch.nn.Module):
    """ControlVideo's `attn_temp` and its zero-initialised 1x1 `conv_temp` of one transformer block."""

    def __init__(self, dim: int, heads: int, bias: bool, operations):
        super().__init__()
        self.attn_temp = video_layers.TemporalAttention(dim, heads, bias=bias, operations=operations)
        self.conv_temp = operations.Conv2d(dim, dim, 1)


class TemporalLayers(torch.nn.Module):
    """The temporal layers of a video MODEL in ComfyUI's manual-cast layers (weights cast to the
    activations' dtype and device at each call, as ComfyUI does for the UNet's own layers when it
    must), in the UNet's order of transformer blocks:

    - Tune-A-Video: a `TemporalBlock` on every transformer block, seeded init (`temporal_state`);
    - ControlVideo: a `KeyFrameTemporalBlock` on every transformer block but the middle block's
      (thu-ml/controlvideo puts none there), attn_temp copied from the block's own self-attention
      (`attn1_states`, the checkpoint's tensors), conv_temp zero.

    `site_indices[j]` is the transformer block (in `transformer_sites` order) of `blocks[j]`."""

    def __init__(self, sites, group_norm: str, names: list[str], dtype: torch.dtype, design: str = TUNE_A_VIDEO,
                 attn1_states: list[dict[str, torch.Tensor]] | None = None):
        super().__init__()
        self.design = design
        if design == CONTROLVIDEO:
            self.site_indices = [i for i, (_, key, _) in enumerate(sites) if key[0] != "middle"]
        else:
            self.site_indices = list(range(len(sites)))
        self.names = [names[i] for i in self.site_indices]  # Tune-A-Video's (diffusers') block names, for files
        blocks, states = [], []
        for index in self.site_indices:
            block = sites[index][2]
            dim, heads = block.attn1.to_q.in_features, block.n_heads
            bias = block.attn1.to_q.bias is not None
            if design == CONTROLVIDEO:
                blocks.append(KeyFrameTemporalBlock(dim, heads, bias, comfy.ops.manual_cast))
                states.append(video_layers.key_frame_temporal_state(attn1_states[index]))
            else:
                blocks.append(TemporalBlock(dim, heads, bias, comfy.ops.manual_cast))
                states.append(video_layers.temporal_state(dim, heads, index, group_norm, bias=bias))
        self.blocks = torch.nn.ModuleList(blocks)
        with torch.no_grad():
            for block, state in zip(self.blocks, states):
                block.load_state_dict({k: v.to(dtype) for k, v in state.items()})

    def named_state_parameters(self, block_name: str | None = None):
        """(Tune-A-Video name, parameter) of every temporal parameter, block by block
        (down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight); of the block of
        that name only, when given (none for a block without temporal layers)."""
        for name, block in zip(self.names, self.blocks):
            if block_name is None or name == block_name:
                for key, p in block.named_parameters():
                    yield f"{name}.{key}", p

    def named_state(self) -> dict[str, torch.Tensor]:
        """Every temporal tensor (the layers hold no buffers), detached, under those names."""
        return {name: p.detach() for name, p in self.named_state_parameters()}

    def load_named_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copies tensors keyed as `named_state` gives them in (a subset: the tuned ones)."""
        own = self.named_state()
        unknown = sorted(state.keys() - own.keys())
        if unknown:
            raise ValueError(f"temporal weights for no layer of this model: {unknown[:3]}")
        with torch.no_grad():
            for key, tensor in state.items():
                own[key].copy_(tensor)


class TemporalHook:
    """Forward hook on a transformer block: `video_layers.temporal_residual` on its output."""

    def __init__(self, patches: "VideoPatches", index: int):
        self.patches, self.index = patches, index

    def __call__(self, block, args, output):
        temporal = self.patches.temporal.blocks[self.index]
        return video_layers.temporal_residual(output, self.patches.layout.num_frames, temporal.norm_temp,
                                              temporal.attn_temp, comfy_attention)


class KeyFrameTemporalHooks:
    """ControlVideo's temporal branch on a transformer block: a forward hook on `norm1` keeps its
    output, one on `attn1.to_out` adds `video_layers.key_frame_temporal` of it to the
    self-attention's output, so the block computes h + attn1(n) + conv_temp(attn_temp(n)), as
    ControlVideo's does, before its cross-attention."""

    def __init__(self, patches: "VideoPatches", index: int):
        self.patches, self.index = patches, index
        self.normed: torch.Tensor | None = None

    def after_norm1(self, module, args, output):
        self.normed = output

    def after_to_out(self, module, args, output):
        normed, self.normed = self.normed, None
        if normed is None:
            raise RuntimeError("ControlVideo's temporal attention found no norm1 output for this transformer block")
        temporal = self.patches.temporal.blocks[self.index]
        return output + video_layers.key_frame_temporal(normed, self.patches.layout.num_frames, temporal.attn_temp,
                                                        temporal.conv_temp, comfy_attention)


class VideoPatches:
    """What a video MODEL adds to ComfyUI's UNet, shared by all clones of that MODEL (ComfyUI
    deep-copies model options at every clone: the patches must stay one object, with one layout).

    Args:
        attention: one of `video_layers.FRAME_ATTENTION_MODES`.
        group_norm: one of `video_layers.GROUP_NORM_MODES`.
        temporal: the temporal layers, or None (training-free: Cross-frame Attention).
        chunk_size: run videos longer than this in chunks led by frame 0 (None: whole).
        key_frame: the frame every frame attends to with key_frame attention (ControlVideo).
    """

    def __init__(self, attention: str, group_norm: str, temporal: TemporalLayers | None, chunk_size: int | None,
                 key_frame: int = 0):
        self.attention, self.group_norm, self.temporal, self.chunk_size = attention, group_norm, temporal, chunk_size
        self.key_frame = key_frame
        self.layout = video_layers.FrameLayout()
        self.batch: int | None = None  # latents in the current UNet call (set with the layout)
        self._handles: dict[int, list] = {}
        # "HxW" of the latents the weights were tuned on (One-shot Tune, Load Tuned Video Weights).
        self.tuned_latent_size: str | None = None

    def __deepcopy__(self, memo):
        return self

    def with_temporal(self, temporal: TemporalLayers) -> "VideoPatches":
        """The same video model with other temporal layers (tuned ones, or trainable copies)."""
        return VideoPatches(self.attention, self.group_norm, temporal, self.chunk_size, self.key_frame)

    @property
    def design(self) -> str | None:
        """TUNE_A_VIDEO or CONTROLVIDEO (the temporal layers'), None without temporal layers."""
        return None if self.temporal is None else self.temporal.design

    # ------------------------------------------------------------ attn1 replacement

    def attn1(self, q, k, v, extra_options):
        if self.batch is not None and q.shape[0] != self.batch:
            raise ValueError(
                f"another patch changed the self-attention's batch from {self.batch} frames to {q.shape[0]} "
                "(HyperTile, or a node that tiles the tokens): the video model's frame attention needs the "
                "frames in the batch; remove that node from a video MODEL"
            )
        attention = functools.partial(comfy_attention, transformer_options=extra_options)
        return video_layers.frame_attention(q, k, v, extra_options["n_heads"], self.layout.num_frames,
                                            self.attention, attention, key_frame=self.key_frame)

    # ------------------------------------------------------------ OUTER_SAMPLE wrapper

    def outer_sample(self, executor, noise, latent_image, *args, **kwargs):
        """Before any model call of a sampling (and of tuning and inversion, which run inside one):
        every ControlNet on the conditioning has one control image per frame, at the frames' size.
        ComfyUI would otherwise repeat, drop or resize them without a word."""
        guider = executor.class_obj
        require_controls_fit(getattr(guider, "conds", None) or {}, latent_image)
        if self.attention == video_layers.KEY_FRAME and latent_image.dim() == 4:
            video_layers.require_key_frame(self.key_frame, latent_image.shape[0])
        return executor(noise, latent_image, *args, **kwargs)

    # ------------------------------------------------------------ DIFFUSION_MODEL wrapper

    def diffusion_model(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        groups = max(len(transformer_options.get("cond_or_uncond") or ()), 1)
        if x.shape[0] % groups:
            raise ValueError(f"a batch of {x.shape[0]} latents is not {groups} whole videos")
        frames = x.shape[0] // groups
        if self.chunk_size is None or frames <= self.chunk_size:
            self.layout.num_frames, self.batch = frames, x.shape[0]
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        batch = x.shape[0]

        def pick(value, index):
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch:
                return value.index_select(0, index.to(value.device))
            if isinstance(value, dict):
                return {k: pick(v, index) for k, v in value.items()}
            if isinstance(value, list):
                return [pick(v, index) for v in value]
            return value

        def chunk(x_chunk, index, n):
            self.layout.num_frames, self.batch = n, x_chunk.shape[0]
            extra = {k: pick(v, index) for k, v in kwargs.items()}
            return executor(x_chunk, pick(timesteps, index), pick(context, index), pick(y, index),
                            pick(control, index), transformer_options, **extra)

        order = torch.arange(batch, device=x.device)
        return video_layers.forward_in_chunks(chunk, (x, order), frames, self.chunk_size)

    # ------------------------------------------------------------ injection

    def inject(self, patcher) -> None:
        diffusion_model = patcher.model.diffusion_model
        handles = []
        if self.temporal is not None:
            sites = transformer_sites(diffusion_model)
            if len(sites) <= max(self.temporal.site_indices, default=-1):
                raise ValueError("the video MODEL's temporal layers do not match its UNet's transformer blocks")
            for j, i in enumerate(self.temporal.site_indices):
                block = sites[i][2]
                if self.temporal.design == CONTROLVIDEO:
                    hooks = KeyFrameTemporalHooks(self, j)
                    handles += [block.norm1.register_forward_hook(hooks.after_norm1),
                                block.attn1.to_out.register_forward_hook(hooks.after_to_out)]
                else:
                    handles.append(block.register_forward_hook(TemporalHook(self, j)))
        if self.group_norm == "video":
            hooks = video_layers.FrameGroupNormHooks(self.layout)
            for norm in video_group_norms(diffusion_model):
                handles += [norm.register_forward_pre_hook(hooks.before), norm.register_forward_hook(hooks.after)]
        self._handles[id(patcher.model)] = handles

    def eject(self, patcher) -> None:
        for handle in self._handles.pop(id(patcher.model), []):
            handle.remove()


def require_controls_fit(conds: dict, latent: torch.Tensor) -> None:
    """Every ControlNet (and T2I adapter) on the conditioning of a video has one control image per
    frame at the frames' pixel size: said with both counts or sizes."""
    if latent.is_nested or latent.dim() != 4:
        return
    frames, height, width = latent.shape[0], latent.shape[-2], latent.shape[-1]
    for name, entries in conds.items():
        for cond in entries or []:
            control = cond.get("control")
            while control is not None:
                hint = getattr(control, "cond_hint_original", None)
                if isinstance(hint, torch.Tensor) and hint.dim() == 4:
                    ratio = getattr(control, "compression_ratio", 8) or 8
                    if hint.shape[0] != frames:
                        raise ValueError(
                            f"the ControlNet on the {name} conditioning has {hint.shape[0]} control image"
                            f"{'s' if hint.shape[0] != 1 else ''} but the video has {frames} frames: give it one "
                            "control image per frame (e.g. Canny on the same Select Video Frames output; for one "
                            "image on every frame, Repeat Image Batch)"
                        )
                    size, expected = (hint.shape[-1], hint.shape[-2]), (width * ratio, height * ratio)
                    if size != expected:
                        raise ValueError(
                            f"the ControlNet on the {name} conditioning has control images of {size[0]}x{size[1]} px "
                            f"but the video's frames are {expected[0]}x{expected[1]} px: make the control images from "
                            "the frames at the video's size (Select Video Frames width/height, or Upscale Image)"
                        )
                control = getattr(control, "previous_controlnet", None)


def video_patches(model) -> VideoPatches | None:
    """The patches of a ComfyUI-native video MODEL, or None for any other MODEL."""
    return model.get_attachment(KEY) if hasattr(model, "get_attachment") else None


def native_video_model(model, attention: str, temporal: bool, group_norm: str | None = None,
                       chunk_size: int | None = None, design: str = TUNE_A_VIDEO, key_frame: int = 0):
    """A clone of `model` that is a video model: frame attention (`attention`), with `temporal`
    the temporal layers of `design` (Tune-A-Video's, or ControlVideo's with key_frame attention),
    and the group norm `group_norm` (default: "video" with temporal layers, "per_frame" without,
    as `inflate.inflate_unet`)."""
    if attention not in video_layers.FRAME_ATTENTION_MODES:
        raise ValueError(f"attention mode {attention!r}; choose one of {video_layers.FRAME_ATTENTION_MODES}")
    if design not in (TUNE_A_VIDEO, CONTROLVIDEO):
        raise ValueError(f"video model design {design!r}; choose {TUNE_A_VIDEO} or {CONTROLVIDEO}")
    if group_norm is None:
        group_norm = "video" if temporal else "per_frame"
    if group_norm not in video_layers.GROUP_NORM_MODES:
        raise ValueError(f"group_norm {group_norm!r}; choose one of {video_layers.GROUP_NORM_MODES}")
    if video_patches(model) is not None:
        raise ValueError("this MODEL is already inflated (a video model); connect the Load Checkpoint MODEL instead")
    diffusion_model = model.model.diffusion_model
    sites = transformer_sites(diffusion_model)
    taken = [key for key in dict.fromkeys(key for _, key, _ in sites) if _attn1_replacement(model, key) is not None]
    if taken:
        raise ValueError(
            f"this MODEL already replaces the self-attention of {', '.join(f'{name} {number}' for name, number in taken)} "
            "(another node's attn1 patch), which the video model's frame attention needs: apply that node after "
            "Inflate UNet / Cross-frame Attention"
        )
    if not sites:
        raise ValueError("this MODEL's UNet has no transformer blocks to make a video model of")
    layers = None
    if temporal:
        names = diffusers_block_names(model, [path for path, _, _ in sites])
        attn1_states = None
        if design == CONTROLVIDEO:
            attn1_states = [{name: checkpoint_tensor(model, f"diffusion_model.{path}.attn1.{name}")
                             for name, _ in block.attn1.named_parameters()} for path, _, block in sites]
        with torch.inference_mode(False):
            layers = TemporalLayers(sites, group_norm, names, model.model.get_dtype(), design, attn1_states)
    return with_patches(model.clone(), VideoPatches(attention, group_norm, layers, chunk_size, key_frame))


def checkpoint_tensor(model, key: str) -> torch.Tensor:
    """The checkpoint's own tensor under `key` (e.g. diffusion_model....attn1.to_q.weight), not a
    LoRA-patched one: while a clone of this model is loaded, ComfyUI keeps the originals of the
    weights it patched in place in the clones' shared backup."""
    backups = [model.backup] + [loaded.model.backup for loaded in comfy.model_management.current_loaded_models
                                if loaded.model is not None and loaded.model.model is model.model]
    for backup in backups:
        if key in backup:
            return backup[key].weight
    return comfy.utils.get_attr(model.model, key)


def with_patches(model, patches: VideoPatches, managed_temporal: bool = True):
    """Puts `patches` on `model` (a clone), in place of any video patches it carries.

    `managed_temporal`: the temporal layers are an additional model that ComfyUI loads with the
    UNet (False while tuning: the tuner keeps its float32 trainables on the device itself)."""
    diffusion_model = model.model.diffusion_model
    for block_key in dict.fromkeys(key for _, key, _ in transformer_sites(diffusion_model)):
        current = _attn1_replacement(model, block_key)
        # Ours, or none; another node's replacement, added after the video model was made, stays.
        if current is None or isinstance(getattr(current, "__self__", None), VideoPatches):
            model.set_model_attn1_replace(patches.attn1, *block_key)
    wrappers = model.model_options.setdefault("transformer_options", {}).setdefault("wrappers", {})
    wrappers.setdefault(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {})[KEY] = [patches.diffusion_model]
    model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, patches.outer_sample)
    model.set_injections(KEY, [comfy.patcher_extension.PatcherInjection(patches.inject, patches.eject)])
    model.remove_additional_models(KEY)
    if patches.temporal is not None and managed_temporal:
        temporal_patcher = comfy.model_patcher.ModelPatcher(patches.temporal, load_device=model.load_device,
                                                           offload_device=model.offload_device)
        model.set_additional_models(KEY, [temporal_patcher])
    model.set_attachments(KEY, patches)
    return model


def _attn1_replacement(model, block_key: tuple[str, int]):
    """The attn1 replacement the MODEL sets for a whole block (ComfyUI's (name, number) key), if any."""
    options = model.model_options.get("transformer_options", {})
    return options.get("patches_replace", {}).get("attn1", {}).get(block_key)


def loaded_models(model) -> list:
    """The MODEL and the models it needs loaded with it (its temporal layers), for load_models_gpu."""
    return [model, *model.get_nested_additional_models()]
