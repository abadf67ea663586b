"""Run by a host's own Python, in its ComfyUI folder: the ComfyUI-native video model (patches on
ComfyUI's UNet, nodes/video_patches.py) against the core's diffusers video model built from the
same tiny checkpoint (smooth_core.inflate), in float32 on the CPU. Prints one JSON object:
{case: {"difference": max |native - core|, "scale": max |core|, ...}} and a few facts.

Usage: python native_model_check.py <ComfyUI folder> <custom_nodes folder holding the pack> <checkpoint>
"""

import importlib
import json
import sys

comfy_dir, custom_nodes, checkpoint = sys.argv[1:4]
sys.path[:0] = [comfy_dir, custom_nodes]

import torch  # noqa: E402

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # as the test servers run (--cpu), before model_management picks a device
import comfy.model_management  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.sd  # noqa: E402

pack = importlib.import_module("ComfyUI-SmoothVideo")
patches_module = importlib.import_module("ComfyUI-SmoothVideo.nodes.video_patches")
convert = importlib.import_module("ComfyUI-SmoothVideo.smooth_core.convert")
inflate = importlib.import_module("ComfyUI-SmoothVideo.smooth_core.inflate")
tune = importlib.import_module("ComfyUI-SmoothVideo.smooth_core.tune")
video_tuning = importlib.import_module("ComfyUI-SmoothVideo.nodes.video_tuning")

torch.manual_seed(0)
model = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=False, output_clip=False)[0]
assert model.model.get_dtype() == torch.float32, model.model.get_dtype()
weights = {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}

VIDEOS, FRAMES = 2, 5  # two videos in one batch, as a CFG batch holds cond and uncond
g = torch.Generator().manual_seed(7)
x = torch.randn(VIDEOS * FRAMES, 4, 8, 8, generator=g)
timesteps = torch.tensor([301.0, 301.0]).repeat_interleave(FRAMES)
context = torch.randn(VIDEOS, 3, 768, generator=g).repeat_interleave(FRAMES, dim=0)


def native_call(video_model, frames_x=x, t=timesteps, ctx=context, groups=VIDEOS):
    """The video MODEL's diffusion model called directly, with its patches and wrappers."""
    comfy.model_management.load_models_gpu(patches_module.loaded_models(video_model))
    options = comfy.patcher_extension.copy_nested_dicts(video_model.model_options.get("transformer_options", {}))
    options["cond_or_uncond"] = list(range(groups))
    with torch.no_grad():
        return video_model.model.diffusion_model(frames_x, t, context=ctx, transformer_options=options)


def plain_call():
    comfy.model_management.load_models_gpu([model])
    with torch.no_grad():
        return model.model.diffusion_model(x, timesteps, context=context, transformer_options={})


def core_model(attention, temporal, group_norm):
    unet, _ = convert.ldm_unet_to_diffusers(weights)
    return inflate.inflate_unet(unet.eval(), attention, temporal=temporal, group_norm=group_norm)


def random_temporal(core):
    """Non-zero temporal weights (all of attn_temp and norm_temp), the same on both paths."""
    gen = torch.Generator().manual_seed(11)
    state = {}
    with torch.no_grad():
        for name, p in core.unet.named_parameters():
            if ".attn_temp." in name or ".norm_temp." in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
                state[name] = p.detach().clone()
    return state


results = {}
before = plain_call()
for attention in ("sparse_causal", "cross_frame"):
    for group_norm in ("video", "per_frame"):
        for weights_kind in ("init", "random"):
            core = core_model(attention, True, group_norm)
            native = patches_module.native_video_model(model, attention, temporal=True, group_norm=group_norm)
            patches = patches_module.video_patches(native)
            if weights_kind == "random":
                state = random_temporal(core)
                own = patches.temporal.named_state()
                assert own.keys() == state.keys(), sorted(own.keys() ^ state.keys())[:4]
                patches.temporal.load_named_state(state)
            else:  # the same seeded init on both paths
                own = patches.temporal.named_state()
                core_state = {k: v for k, v in core.unet.state_dict().items() if "_temp." in k}
                assert own.keys() == core_state.keys(), sorted(own.keys() ^ core_state.keys())[:4]
                assert all(torch.equal(own[k], core_state[k]) for k in own), "temporal init differs"
            with torch.no_grad():
                expected = core.forward_frames(x, timesteps, context, FRAMES)
            out = native_call(native)
            results[f"{attention}/{group_norm}/{weights_kind}"] = {
                "difference": (out - expected).abs().max().item(), "scale": expected.abs().max().item(),
            }
            del native, patches  # a dropped video MODEL takes its temporal layers with it

# Training-free (Cross-frame Attention): no temporal layers, per-frame group norm; in chunks too.
core = core_model("cross_frame", False, None)
with torch.no_grad():
    expected = core.forward_frames(x, timesteps, context, FRAMES)
for chunk_size in (None, 2, 3):
    native = patches_module.native_video_model(model, "cross_frame", temporal=False, chunk_size=chunk_size)
    out = native_call(native)
    results[f"cross_frame/training_free/chunks_of_{chunk_size}"] = {
        "difference": (out - expected).abs().max().item(), "scale": expected.abs().max().item(),
    }

# float64: both models equal in exact arithmetic, so any real difference in semantics shows.
with torch.inference_mode(False):
    model.model.diffusion_model.double()
model.model.diffusion_model.dtype = torch.float64  # what ComfyUI casts the UNet's input to
for group_norm in ("video", "per_frame"):
    core = core_model("sparse_causal", True, group_norm).double()
    state = random_temporal(core)
    native = patches_module.native_video_model(model, "sparse_causal", temporal=True, group_norm=group_norm)
    patches = patches_module.video_patches(native)
    patches.temporal.double().load_named_state(state)
    with torch.no_grad():
        expected = core.forward_frames(x.double(), timesteps.double(), context.double(), FRAMES)
    out = native_call(native, x.double(), timesteps.double(), context.double())
    results[f"float64/sparse_causal/{group_norm}/random"] = {
        "difference": (out - expected).abs().max().item(), "scale": expected.abs().max().item(), "float64": True,
    }
    del native, patches

# float64 gradients of Eq. 4 at one noisy video: the same training signal on both paths.
losses_module = importlib.import_module("ComfyUI-SmoothVideo.smooth_core.losses")
schedule = importlib.import_module("ComfyUI-SmoothVideo.smooth_core.schedule")
x0 = torch.randn(1, 4, 4, 8, 8, generator=g, dtype=torch.float64)
noise = torch.randn(1, 4, 4, 8, 8, generator=g, dtype=torch.float64)
text64 = torch.randn(1, 3, 768, generator=g, dtype=torch.float64)
t = torch.tensor([400])
a = schedule.sd15_alphas_cumprod()[t].view(1, 1, 1, 1, 1)
x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
c = schedule.c_for_timesteps(t, schedule.sd15_alphas_cumprod())


def eq4(eps):
    return losses_module.total_loss(eps, noise, x_t, c, 1000.0, 0.2, "cross_frame", "l1")[0]


core = core_model("sparse_causal", True, "video").double()
random_temporal(core)
core.mark_trainable()
core_eps = core(x_t, t, text64)
eq4(core_eps).backward()
core_grads = {name: p.grad for name, p in core.unet.named_parameters() if p.requires_grad}
native = patches_module.native_video_model(model, "sparse_causal", temporal=True)
patches_module.video_patches(native).temporal.double().load_named_state(
    {k: v for k, v in core.unet.state_dict().items() if "_temp." in k})
tunable = video_tuning.NativeTunable(native, patches_module.video_patches(native), torch.device("cpu"), torch.float64)


native_eps = []


def gradient_body():
    tunable.mark_trainable()
    native_eps.append(tunable(x_t, t, text64))
    eq4(native_eps[0]).backward()


video_tuning.run_in_guider(tunable, [[text64, {}]], tuple(x0.shape), gradient_body)
grad_of = {name: p.grad for name, p in tunable.named_trainable_parameters().items()}
assert grad_of.keys() == core_grads.keys(), sorted(grad_of.keys() ^ core_grads.keys())[:4]
results["float64/training_eps"] = {
    "difference": (native_eps[0] - core_eps).abs().max().item(), "scale": core_eps.abs().max().item(), "float64": True,
}
results["float64/gradients"] = {
    "difference": max((grad_of[k] - core_grads[k]).abs().max().item() for k in core_grads),
    "scale": max(core_grads[k].abs().max().item() for k in core_grads), "float64": True,
}
del native, tunable
with torch.inference_mode(False):
    model.model.diffusion_model.float()
model.model.diffusion_model.dtype = torch.float32

# A short tune on both paths from the same start: the same trained tensors within float32 noise.
latents = torch.randn(1, 4, 4, 8, 8, generator=g)
text = torch.randn(1, 3, 768, generator=g)
config = tune.TuneConfig(steps=3, learning_rate=1e-3, lambda2=0.2, seed=5, mixed_precision="no")
tunes = {}
for checkpointing in (False, True):
    core = core_model("sparse_causal", True, "video")
    core_records = tune.Tuner(core, latents, text, tune.TuneConfig(**{**config.__dict__,
                                                                      "gradient_checkpointing": checkpointing})).run()
    core_state = core.trainable_state_dict()
    native = patches_module.native_video_model(model, "sparse_causal", temporal=True)
    tunable = video_tuning.NativeTunable(native, patches_module.video_patches(native), torch.device("cpu"))
    if checkpointing:
        tunable.enable_gradient_checkpointing()
    records = []

    def body():
        tuner = tune.Tuner(tunable, latents, text, tune.TuneConfig(**{**config.__dict__,
                                                                   "gradient_checkpointing": checkpointing}))
        records.extend(tuner.run())

    video_tuning.run_in_guider(tunable, [[text, {}]], tuple(latents.shape), body)
    native_state = tunable.trainable_state_dict()
    assert native_state.keys() == core_state.keys(), sorted(native_state.keys() ^ core_state.keys())[:4]
    start = {k: v for k, v in core_model("sparse_causal", True, "video").trainable_state_dict().items()}
    moved = sum((core_state[k] - start[k]).square().sum().item() for k in core_state) ** 0.5
    difference = sum((native_state[k] - core_state[k]).square().sum().item() for k in core_state) ** 0.5
    tuned = video_tuning.tuned_model(native, tunable.tuned_weights(), "8x8")
    with torch.no_grad():
        expected = core.forward_frames(x, timesteps, context, FRAMES)
    out = native_call(tuned)
    name = f"checkpointing_{checkpointing}"
    tunes[name] = {
        "weights_difference": difference, "weights_moved": moved, "losses": [r.total for r in records],
        "core_losses": [r.total for r in core_records],
        "output_difference": (out - expected).abs().max().item(), "output_scale": expected.abs().max().item(),
    }
    if not checkpointing:
        # The files are exchangeable: saved from ComfyUI, loaded into the core's model; saved from
        # the core, loaded into ComfyUI's (both under Tune-A-Video's key names).
        import tempfile
        with tempfile.TemporaryDirectory() as folder:
            tune.save_tuned_weights(tunable, f"{folder}/native.safetensors", {})
            tune.save_tuned_weights(core, f"{folder}/core.safetensors", {})
            from_native = core_model("sparse_causal", True, "video")
            from_native.load_trainable_state_dict(tune.load_tuned_weights(f"{folder}/native.safetensors")[0])
            from_core = video_tuning.tuned_model(native, video_tuning.split_tuned_weights(
                native, patches_module.video_patches(native), tune.load_tuned_weights(f"{folder}/core.safetensors")[0]),
                "8x8")
        with torch.no_grad():
            core_from_native = from_native.forward_frames(x, timesteps, context, FRAMES)
        tunes[name]["file_from_comfyui_into_core"] = (core_from_native - out).abs().max().item()
        tunes[name]["file_from_core_into_comfyui"] = (native_call(from_core) - expected).abs().max().item()
        del from_native, from_core
    del native, tunable, tuned

# Gradient checkpointing acts: per tuning step, the forward pass runs every ResBlock and transformer
# block once more (counted by hooks inside them, which the recomputation passes through too), and
# the tensors autograd saves outside the checkpointed layers are a fraction of those saved without.
checkpointing_counts = {}
for checkpointing in (False, True):
    native = patches_module.native_video_model(model, "sparse_causal", temporal=True)
    tunable = video_tuning.NativeTunable(native, patches_module.video_patches(native), torch.device("cpu"))
    if checkpointing:
        tunable.enable_gradient_checkpointing()
    diffusion_model = native.model.diffusion_model
    calls = {"resnet": 0, "transformer": 0}
    saved = {"bytes": 0, "tensors": 0}

    def count(kind):
        def hook(module, args):
            calls[kind] += 1
        return hook

    def pack_saved(tensor):
        saved["bytes"] += tensor.numel() * tensor.element_size()
        saved["tensors"] += 1
        return tensor

    def counting_body():
        tunable.mark_trainable()
        handles = [m.in_layers.register_forward_pre_hook(count("resnet")) for m in diffusion_model.modules()
                   if type(m).__name__ == "ResBlock"]
        handles += [m.register_forward_pre_hook(count("transformer")) for m in diffusion_model.modules()
                    if type(m).__name__ == "BasicTransformerBlock"]
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack_saved, lambda tensor: tensor):
                eps = tunable(latents, torch.tensor([500]), text)
            eps.square().mean().backward()
        finally:
            for handle in handles:
                handle.remove()

    video_tuning.run_in_guider(tunable, [[text, {}]], tuple(latents.shape), counting_body)
    checkpointing_counts[f"checkpointing_{checkpointing}"] = {
        **calls, "saved_bytes": saved["bytes"], "saved_tensors": saved["tensors"],
        "grad_norm": sum(p.grad.square().sum().item() for p in tunable.trainable_parameters() if p.grad is not None) ** 0.5,
    }
    del native, tunable

after = plain_call()
facts = {
    "plain_model_unchanged": bool(torch.equal(before, after)),
    "no_hooks_left": not any(m._forward_hooks or m._forward_pre_hooks for m in model.model.diffusion_model.modules()),
    "video_differs_from_plain": (native_call(patches_module.native_video_model(model, "sparse_causal", True))
                                 - before).abs().max().item(),
}
print(json.dumps({"cases": results, "facts": facts, "tunes": tunes, "checkpointing": checkpointing_counts}))
