"""Run by a host's own Python, in its ComfyUI folder: every transformer block of the ComfyUI-native
ControlVideo model (Inflate UNet (ControlVideo): patches on ComfyUI's UNet) against ControlVideo's
transformer block written out here in float64 from thu-ml/controlvideo's libs/attention.py:

    n = norm1(h)
    h = h + to_out(softmax(q(n) k(n_key)^T / sqrt(d)) v(n_key))     # KeyFrameAttention, key frame k
    h = h + conv_temp(attn_temp(n over the frames at each token))    # only where it has attn_temp
    h = h + attn2(norm2(h), context)
    h = h + ff(norm3(h))

with random non-zero temporal weights, two videos in one batch (cond and uncond) and key frame 2.
Each block's reference starts from the input the native block got, so a difference points at the
block. Prints one JSON object: {"blocks": [{"path", "temporal", "difference", "scale"}], ...}.

Usage: python controlvideo_check.py <ComfyUI folder> <custom_nodes folder holding the pack> <checkpoint>
"""

import importlib
import json
import math
import sys

comfy_dir, custom_nodes, checkpoint = sys.argv[1:4]
sys.path[:0] = [comfy_dir, custom_nodes]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # as the test servers run (--cpu), before model_management picks a device
import comfy.model_management  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.sd  # noqa: E402

importlib.import_module("ComfyUI-SmoothVideo")
patches_module = importlib.import_module("ComfyUI-SmoothVideo.nodes.video_patches")

VIDEOS, FRAMES, KEY_FRAME = 2, 5, 2
model = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=False, output_clip=False)[0]
with torch.inference_mode(False):
    model.model.diffusion_model.double()
model.model.diffusion_model.dtype = torch.float64  # what ComfyUI casts the UNet's input to
native = patches_module.native_video_model(model, "key_frame", temporal=True, group_norm="video",
                                           design=patches_module.CONTROLVIDEO, key_frame=KEY_FRAME)
patches = patches_module.video_patches(native)
gen = torch.Generator().manual_seed(5)
with torch.inference_mode(False), torch.no_grad():
    patches.temporal.double()
    for p in patches.temporal.parameters():  # conv_temp starts at zero: make the branch count
        p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64))

g = torch.Generator().manual_seed(7)
x = torch.randn(VIDEOS * FRAMES, 4, 8, 8, generator=g, dtype=torch.float64)
timesteps = torch.tensor([301.0, 301.0], dtype=torch.float64).repeat_interleave(FRAMES)
context = torch.randn(VIDEOS, 3, 768, generator=g, dtype=torch.float64).repeat_interleave(FRAMES, dim=0)


def linear(layer, h):
    return F.linear(h, layer.weight, layer.bias)


def attention(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head, written out: q (B, Lq, heads d), k and v (B, Lk, heads d)."""
    b, lq, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, lq, inner)


def layer_norm(norm, h):
    return F.layer_norm(h, (h.shape[-1],), norm.weight, norm.bias, norm.eps)


def reference_block(block, temporal, h, ctx):
    heads = block.attn1.heads
    n = layer_norm(block.norm1, h)
    q, k, v = linear(block.attn1.to_q, n), linear(block.attn1.to_k, n), linear(block.attn1.to_v, n)
    key = torch.cat([k[video * FRAMES + KEY_FRAME].expand(FRAMES, -1, -1) for video in range(VIDEOS)])
    value = torch.cat([v[video * FRAMES + KEY_FRAME].expand(FRAMES, -1, -1) for video in range(VIDEOS)])
    out = h + linear(block.attn1.to_out[0], attention(q, key, value, heads))
    if temporal is not None:
        tokens, c = n.shape[1], n.shape[2]
        seq = n.reshape(VIDEOS, FRAMES, tokens, c).permute(0, 2, 1, 3).reshape(VIDEOS * tokens, FRAMES, c)
        a = temporal.attn_temp
        t = linear(a.to_out[0], attention(linear(a.to_q, seq), linear(a.to_k, seq), linear(a.to_v, seq), a.heads))
        t = t.reshape(VIDEOS, tokens, FRAMES, c).permute(0, 2, 1, 3).reshape(VIDEOS * FRAMES, tokens, c)
        conv = temporal.conv_temp
        out = out + (t @ conv.weight[:, :, 0, 0].T + conv.bias)
    n2 = layer_norm(block.norm2, out)
    out = out + linear(block.attn2.to_out[0], attention(linear(block.attn2.to_q, n2), linear(block.attn2.to_k, ctx),
                                                       linear(block.attn2.to_v, ctx), heads))
    n3 = layer_norm(block.norm3, out)
    projected, gate = linear(block.ff.net[0].proj, n3).chunk(2, dim=-1)
    return out + linear(block.ff.net[2], projected * F.gelu(gate))


captured = {}
sites = patches_module.transformer_sites(model.model.diffusion_model)
handles = []
for path, _, block in sites:
    def capture(module, args, kwargs, output, _path=path):
        captured[_path] = (args[0].detach().clone(), kwargs.get("context", args[1] if len(args) > 1 else None), output)
    handles.append(block.register_forward_hook(capture, with_kwargs=True))

comfy.model_management.load_models_gpu(patches_module.loaded_models(native))
options = comfy.patcher_extension.copy_nested_dicts(native.model_options.get("transformer_options", {}))
options["cond_or_uncond"] = list(range(VIDEOS))
with torch.no_grad():
    native.model.diffusion_model(x, timesteps, context=context, transformer_options=options)
    temporal_of = dict(zip(patches.temporal.site_indices, patches.temporal.blocks))
    blocks = []
    for index, (path, key, block) in enumerate(sites):
        h, ctx, output = captured[path]
        expected = reference_block(block, temporal_of.get(index), h, ctx)
        blocks.append({"path": path, "middle": key[0] == "middle", "temporal": index in temporal_of,
                       "difference": (output - expected).abs().max().item(), "scale": expected.abs().max().item()})
for handle in handles:
    handle.remove()
print(json.dumps({"blocks": blocks, "dtype": str(captured[sites[0][0]][2].dtype)}))
