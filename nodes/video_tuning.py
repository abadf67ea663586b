"""One-shot tuning of a ComfyUI-native video MODEL through ComfyUI's own model call.

As `comfy_extras/nodes_train.py` trains LoRAs: the model is loaded whole outside inference
mode, weight wrappers stand trainable tensors in for ComfyUI's weights, and the model runs
inside a guider's sampling, so the `positive` conditioning takes part with all it carries (a
ControlNet, a mask, an area). smooth_core's `Tuner` (the same as on the core's diffusers
model) steps it: `NativeTunable` is its view of the MODEL.

The trainable set is the design's. Tune-A-Video: float32 copies of every transformer block's
`attn1.to_q` and `attn2.to_q` weights (copies, not deltas: AdamW's weight decay acts on the
weights, as in Tune-A-Video) and the temporal attention `attn_temp` (not `norm_temp`).
ControlVideo (thu-ml/controlvideo's configs: attn1.to_out, attn_temp, conv_temp): every block's
`attn1.to_out.0` weight and bias, and its temporal layers, `attn_temp` and `conv_temp`.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.utils.checkpoint

import comfy.ldm.modules.attention
import comfy.model_management
import comfy.utils
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

from ..smooth_core import checks, schedule
from . import video_patches
from .guided import predict_eps, run_with_model_call
from .video_patches import VideoPatches


class TunedWeights:
    """Tuned weights as the video MODEL takes them: UNet weights under ComfyUI's keys
    (diffusion_model....attn1.to_q.weight) and temporal tensors under Tune-A-Video's names."""

    def __init__(self, unet: dict[str, torch.Tensor], temporal: dict[str, torch.Tensor]):
        self.unet, self.temporal = unet, temporal


# The UNet tensors each design tunes, per transformer block, in this order.
UNET_TRAINABLES = {
    video_patches.TUNE_A_VIDEO: ("attn1.to_q.weight", "attn2.to_q.weight"),
    video_patches.CONTROLVIDEO: ("attn1.to_out.0.weight", "attn1.to_out.0.bias"),
}


def unet_trainable_keys(model, patches: VideoPatches) -> list[tuple[str, list[tuple[str, str]]]]:
    """Per transformer block (in the UNet's order), its Tune-A-Video name and (ComfyUI's key,
    Tune-A-Video's name) of each UNet tensor the design tunes there:
    ("down_blocks.0.attentions.0.transformer_blocks.0",
     [("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
       "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"), ...])."""
    sites = video_patches.transformer_sites(model.model.diffusion_model)
    names = video_patches.diffusers_block_names(model, [path for path, _, _ in sites])
    return [(name, [(f"diffusion_model.{path}.{tensor}", f"{name}.{tensor}") for tensor in UNET_TRAINABLES[patches.design]])
            for (path, _, _), name in zip(sites, names)]


def is_temporal_trainable(name: str) -> bool:
    """Every temporal tensor trains but Tune-A-Video's norm_temp (ControlVideo has none)."""
    return ".norm_temp." not in name


def tuning_attention(kernel, *args, **kwargs):
    """Every attention of a tuning step runs in PyTorch's scaled_dot_product_attention (ComfyUI's
    `optimized_attention_override`, which receives the kernel ComfyUI chose and its arguments): its
    fused kernels have a backward pass on every device and keep only their output and log-sum-exp
    for it. ComfyUI's CPU default, sub-quadratic attention, makes autograd keep every chunk's
    attention scores instead (at 24 x 512 px a sparse-causal layer's are 24 x 8 x 4096 x 8192
    floats, 25 GiB), and some GPU kernels (sage attention) have no backward pass at all."""
    return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)


class TrainableWeight:
    """A weight wrapper (ModelPatcher.add_weight_wrapper): the trainable copy replaces the
    weight ComfyUI computes with, in the dtype it computes in (autograd reaches the copy)."""

    def __init__(self):
        self.parameter: torch.nn.Parameter | None = None

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return weight if self.parameter is None else self.parameter.to(weight.dtype)


class NativeTunable:
    """A video MODEL as smooth_core's `Tuner` trains it: the trainables, Tune-A-Video's key names,
    and a noise prediction through ComfyUI's model call (set by `run_in_guider`)."""

    def __init__(self, model, patches: VideoPatches, device: torch.device, dtype: torch.dtype = torch.float32):
        if patches.temporal is None:
            raise ValueError("a video MODEL without temporal layers (Cross-frame Attention) has nothing to tune")
        self.dtype = dtype  # of the trainables: float32 master weights (float64 in the tests' references)
        with torch.inference_mode(False):  # copies autograd can use
            temporal = copy.deepcopy(patches.temporal).to(device, dtype)
        self.patches = patches.with_temporal(temporal)
        self.model = video_patches.with_patches(model.clone(), self.patches, managed_temporal=False)
        # Another node's attention override (it chose its kernel for this MODEL) stays.
        self.model.model_options.setdefault("transformer_options", {}).setdefault(
            "optimized_attention_override", tuning_attention)
        self.device = device
        # Per transformer block, its name and (ComfyUI's key, Tune-A-Video's name, wrapper) of every
        # trainable UNet tensor.
        self.unet_weights = []
        for block_name, keys in unet_trainable_keys(model, patches):
            self.unet_weights.append((block_name, []))
            for key, name in keys:
                wrapper = TrainableWeight()
                self.model.add_weight_wrapper(key, wrapper)
                self.unet_weights[-1][1].append((key, name, wrapper))
        self.in_channels = model.model.model_config.unet_config.get("in_channels")
        self.training = False
        self.predict = None  # (x, sigma) -> denoised, ComfyUI's model call, inside the guider
        # The sigma of each timestep of the Tuner's schedule (SD1.5's; the nodes check the MODEL's is
        # too), in float64 (`guided.predict_eps`).
        self.sigmas = schedule.alpha_bar_to_sigma(schedule.sd15_alphas_cumprod())
        self.checkpointing = False

    # ------------------------------------------------------------ the trainable set

    def _unet_wrappers(self):
        return [entry for _, block in self.unet_weights for entry in block]

    def take_loaded_weights(self) -> None:
        """The trainable UNet copies, from the weights as the loaded model computes with them
        (its LoRAs and earlier tunes applied): call once the model is loaded."""
        with torch.inference_mode(False):
            for key, _, wrapper in self._unet_wrappers():
                if wrapper.parameter is None:
                    weight = comfy.utils.get_attr(self.model.model, key)
                    wrapper.parameter = torch.nn.Parameter(weight.detach().to(self.device, self.dtype, copy=True))

    def _temporal_trainables(self, block_name: str | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of the trainable temporal tensors, of one block when `block_name` is given."""
        temporal = self.patches.temporal
        return [(name, p) for name, p in temporal.named_state_parameters(block_name) if is_temporal_trainable(name)]

    def named_trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Tune-A-Video name -> trainable, block by block: the block's UNet tensors (attn1.to_q,
        attn2.to_q), then its temporal ones, the order of the core's model
        (`inflate.VideoUNet.trainable_parameters`)."""
        if any(wrapper.parameter is None for _, _, wrapper in self._unet_wrappers()):
            raise RuntimeError("the UNet copies are taken from the loaded model: call take_loaded_weights first")
        named = {}
        for block_name, block in self.unet_weights:
            for _, name, wrapper in block:
                named[name] = wrapper.parameter
            named.update(self._temporal_trainables(block_name))
        return named

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.named_trainable_parameters().values())

    def parameters(self):
        return iter(self.trainable_parameters())

    def mark_trainable(self) -> None:
        self.patches.temporal.requires_grad_(False)
        for p in self.trainable_parameters():
            p.requires_grad_(True)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_trainable_parameters().items()}

    def tuned_weights(self) -> TunedWeights:
        return TunedWeights({key: wrapper.parameter.detach() for key, _, wrapper in self._unet_wrappers()},
                            {name: p.detach() for name, p in self._temporal_trainables()})

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.trainable_state_dict()
        checks.require_matching_state(own, state)
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)

    # ------------------------------------------------------------ the Tuner's model protocol

    def train(self, mode: bool = True) -> "NativeTunable":
        self.training = mode
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each UNet block's activations in the backward pass, on the loaded model for
        the tune only. `run_in_guider` reads it at its start: set it before (the Tuner's own call,
        made inside, then changes nothing)."""
        self.checkpointing = True

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """eps for variance-preserving latents x_t (b, f, c, h, w) at integer timesteps t (b,),
        recovered from ComfyUI's output: eps = (x - denoised) / sigma, x = x_t * sqrt(1 + sigma^2).
        The text is the guider's `positive` (text_embeds is its embedding, for the Tuner's checks)."""
        b, f = x_t.shape[:2]
        sigma = self.sigmas[t.cpu()].to(x_t.device).repeat_interleave(f)  # one per frame, float64
        return predict_eps(self.predict, x_t.flatten(0, 1), sigma).to(x_t.dtype).unflatten(0, (b, f))


@contextlib.contextmanager
def autograd_ready(module: torch.nn.Module):
    """Within the block, `module` is frozen (no gradient is computed for any of its parameters:
    the trainables stand in for its to_q weights through weight wrappers) and none of its
    parameters or buffers is an inference tensor: ComfyUI loads models in inference mode (on a CPU
    the loaded weights are the very tensors made then), and autograd cannot save such tensors for
    the backward pass. Each is replaced, one at a time, by a normal tensor with the same values,
    which stays after the block: keeping the originals too would hold the frozen weights twice for
    the whole tune (3.4 GB more at SD1.5 size in float32). On exit the requires_grad flags are back."""
    flags = []  # (module, parameter name, requires_grad): no reference to a replaced tensor
    try:
        with torch.inference_mode(False), torch.no_grad():
            for m in module.modules():
                for store in (m._parameters, m._buffers):
                    for name in list(store):
                        tensor = store[name]
                        if tensor is None:
                            continue
                        parameter = isinstance(tensor, torch.nn.Parameter)
                        if parameter:
                            flags.append((m, name, tensor.requires_grad))
                        if tensor.is_inference():
                            store[name] = torch.nn.Parameter(tensor.clone(), requires_grad=False) \
                                if parameter else tensor.clone()
                        elif parameter:
                            tensor.requires_grad_(False)
                        del tensor
        yield
    finally:
        with torch.inference_mode(False):
            for m, name, flag in flags:
                parameter = m._parameters.get(name)
                if parameter is not None and not parameter.is_inference():
                    parameter.requires_grad_(flag)


def checkpointed_layers(diffusion_model) -> list[tuple[torch.nn.Module, bool]]:
    """The layers gradient checkpointing recomputes: every ResBlock and SpatialTransformer of the
    UNet's input, middle and output blocks (diffusers checkpoints its resnets and attentions alike),
    each with whether it is the first layer of an input or the middle block. ComfyUI runs a block's
    layers one by one (`forward_timestep_embed` iterates over the block and never calls the block's
    own forward), so the layers are what can be wrapped."""
    layers = []
    for part, blocks in (("input", diffusion_model.input_blocks), ("middle", [diffusion_model.middle_block]),
                         ("output", diffusion_model.output_blocks)):
        for block in blocks:
            for index, layer in enumerate(block):
                if isinstance(layer, (ResBlock, SpatialTransformer)):
                    layers.append((layer, part != "output" and index == 0))
    return layers


def _own_options(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call's arguments with each dict (the transformer options) replaced by a shallow copy of
    itself: ComfyUI updates one options dict as it goes through the UNet ("block", "transformer_index"),
    so without a copy the backward pass would recompute the layer with the last block's options."""
    def own(value):
        return dict(value) if isinstance(value, dict) else value

    return tuple(own(a) for a in args), {k: own(v) for k, v in kwargs.items()}


@contextlib.contextmanager
def checkpointed_blocks(diffusion_model, enabled: bool, copy_block_inputs: bool = False):
    """Gradient checkpointing of the UNet's ResBlocks and transformers (`checkpointed_layers`): each
    keeps only its inputs in the forward pass and runs again in the backward pass. Their forward
    is replaced on the loaded model for the block's duration only.

    `copy_block_inputs`: the first layer of each input and the middle block keeps a copy of its input.
    That input is a skip connection, to which ComfyUI adds a ControlNet's residuals in place once the
    output blocks reach it; the recomputation needs the values the layer saw (autograd refuses the
    modified tensor). Only with a ControlNet (or another model the conditioning brings): a copy per
    block otherwise costs memory for nothing."""
    layers = checkpointed_layers(diffusion_model) if enabled else []
    try:
        for layer, block_input in layers:
            original = layer.forward
            copy_input = copy_block_inputs and block_input

            def forward(x, *args, _original=original, _copy=copy_input, **kwargs):
                args, kwargs = _own_options(args, kwargs)
                if _copy:
                    x = x.clone()
                return torch.utils.checkpoint.checkpoint(_original, x, *args, use_reentrant=False, **kwargs)

            layer.forward = forward
        yield
    finally:
        for layer, _ in layers:
            layer.__dict__.pop("forward", None)


def run_in_guider(tunable: NativeTunable, positive, video_shape: tuple, body) -> None:
    """Loads the tuning model whole on its device (outside inference mode, no other model kept),
    then calls `body()` inside a guider's sampling, with `tunable` predicting through it."""
    model = tunable.model
    with torch.inference_mode(False):
        comfy.model_management.unload_all_models()  # weights reloaded now are usable by autograd
        comfy.model_management.load_models_gpu(video_patches.loaded_models(model), memory_required=1e20,
                                               force_full_load=True)
        tunable.take_loaded_weights()

        def inside(predict, models):
            tunable.predict = predict
            try:
                with contextlib.ExitStack() as stack:
                    # The UNet and whatever the conditioning brought (a ControlNet): frozen, autograd-usable.
                    for module in dict.fromkeys([model.model, *(m.model for m in models)]):
                        stack.enter_context(autograd_ready(module))
                    stack.enter_context(checkpointed_blocks(model.model.diffusion_model, tunable.checkpointing,
                                                            copy_block_inputs=any(m.model is not model.model for m in models)))
                    body()
            finally:
                tunable.predict = None

        training_flag = hasattr(comfy.model_management, "in_training")
        if training_flag:
            comfy.model_management.in_training = True
        try:
            run_with_model_call(model, positive, video_shape, inside)
        finally:
            if training_flag:
                comfy.model_management.in_training = False


def split_tuned_weights(model, patches: VideoPatches, state: dict[str, torch.Tensor]) -> TunedWeights:
    """A tuned-weights file's tensors (Tune-A-Video's names) for this video MODEL; a tensor for
    no layer of it, a missing one or a wrong shape is an error."""
    if patches.temporal is None:
        raise ValueError("it has no temporal layers (Cross-frame Attention?)")
    unet_keys = {name: key for _, block in unet_trainable_keys(model, patches) for key, name in block}
    own_temporal = {k: v for k, v in patches.temporal.named_state().items() if is_temporal_trainable(k)}
    expected = {**{k: comfy.utils.get_attr(model.model, v) for k, v in unet_keys.items()}, **own_temporal}
    checks.require_matching_state(expected, state)
    return TunedWeights({unet_keys[k]: state[k] for k in unet_keys}, {k: state[k] for k in own_temporal})


def tuned_model(model, weights: TunedWeights, tuned_latent_size: str | None):
    """A clone of the video MODEL `model` carrying tuned weights as patches: the UNet weights as
    "set" weight patches (LoRAs added later still act on them), the temporal layers (in the UNet's
    dtype) as its additional model."""
    dtype = model.model.get_dtype()
    patches = video_patches.video_patches(model)
    with torch.inference_mode(False):
        temporal = copy.deepcopy(patches.temporal).to(model.offload_device, dtype).requires_grad_(False)
        temporal.load_named_state(weights.temporal)
    tuned_patches = patches.with_temporal(temporal)
    tuned_patches.tuned_latent_size = tuned_latent_size
    tuned = video_patches.with_patches(model.clone(), tuned_patches)
    tuned.add_patches({key: ("set", (tensor.to("cpu", dtype).clone(),)) for key, tensor in weights.unet.items()}, 1.0)
    return tuned
