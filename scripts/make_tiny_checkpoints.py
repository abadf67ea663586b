"""Writes tiny, deterministic, random-weight SD1.5-layout checkpoints for the demo and tests.

No real weights can be downloaded here, so the demo and the integration tests run on these:
they prove the whole pipeline (ComfyUI detects and loads them as SD1.5 / InstructPix2Pix,
our nodes patch their UNet into a video model), not image quality. Layout as in a real
single-file SD1.5 checkpoint: `model.diffusion_model.*` (a one-level UNet with SD1.5's 320
channels and 768-wide context, ~26M parameters), `first_stage_model.*` (the standard SD
VAE, which ComfyUI builds at a fixed size) and `cond_stage_model.transformer.*` (CLIP-L
text encoder, fixed size). Weights are float16 from a seeded generator per tensor.

A tiny ControlNet for that UNet (`control_model.*`, the original single-file layout, random
zero convs so that it acts) goes in models/controlnet, for the composition tests.

One more file is a UNet alone in SD2's layout (1024-wide context, linear projections in
the transformers), for models/diffusion_models: ComfyUI's Load Diffusion Model detects it as
SD2, which the tests use to check that the pack refuses non-SD1.x models clearly.

`--full-size` writes one more checkpoint, for the benchmarks only (never the tests: it is ~1.7 GB):
`smoothvideo_random_sd15_fullsize.safetensors`, the same layout with SD1.5's own UNet (320
channels, mult 1-2-4-4, 2 res blocks a level, ~860M parameters), random weights as above.

A file is rewritten only when its spec or this script changed (a hash kept in the
safetensors metadata). Run with ComfyUI importable: `--comfy DIR` (setup_host.sh does this).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys

TINY_UNET = {
    "image_size": 32,
    "model_channels": 320,
    "out_channels": 4,
    "num_res_blocks": [1],
    "channel_mult": [1],
    "num_heads": 8,
    "use_spatial_transformer": True,
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "transformer_depth_middle": 1,
    "context_dim": 768,
    "use_linear_in_transformer": False,
}
SD_VAE = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
    "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}
CHECKPOINTS = {
    # name -> UNet input channels (8 = InstructPix2Pix: noisy latent + source-image latent)
    "smoothvideo_tiny_sd15.safetensors": 4,
    "smoothvideo_tiny_ip2p.safetensors": 8,
}
# SD1.5's own UNet (what ComfyUI detects in a real SD1.5 checkpoint): the full-size bench model.
SD15_UNET = {
    **TINY_UNET,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
}
FULL_SIZE = "smoothvideo_random_sd15_fullsize.safetensors"
# name -> UNet settings that differ from TINY_UNET; UNet-only files for models/diffusion_models
UNET_ONLY = {
    "smoothvideo_tiny_sd2_unet.safetensors": {"context_dim": 1024, "use_linear_in_transformer": True},
    # Two levels (320 and 640 channels): FreeU scales the 640-channel output blocks (not on one level).
    "smoothvideo_tiny_sd15_two_level_unet.safetensors": {
        "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 1],
        "transformer_depth_output": [1, 1, 1, 1],
    },
}
# name -> a ControlNet for the tiny SD1.5 UNet (its encoder half, zero convs and hint encoder),
# in the original single-file layout (control_model.*) that ComfyUI's Load ControlNet Model detects.
CONTROLNETS = {"smoothvideo_tiny_controlnet_sd15.safetensors": {"hint_channels": 3}}
SEED = 20240101


def spec_hash(in_channels: int, unet_only: dict | None = None, controlnet: dict | None = None,
              unet: dict = TINY_UNET) -> str:
    spec = {"unet": unet, "in_channels": in_channels, "vae": SD_VAE, "seed": SEED}
    if unet_only is not None:
        spec = {"unet": {**TINY_UNET, **unet_only}, "seed": SEED}
    if controlnet is not None:
        spec = {"controlnet": {**TINY_UNET, **controlnet}, "seed": SEED}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    digest.update(pathlib.Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def layout(comfy_dir: pathlib.Path, in_channels: int, unet_only: dict | None = None,
           controlnet: dict | None = None, unet: dict = TINY_UNET) -> dict:
    """Key -> shape of the three sub-models (or, with `unet_only`, of that UNet alone, keys
    unprefixed; with `controlnet`, of a ControlNet for the tiny UNet, keys control_model.*),
    taken from ComfyUI's own classes built on 'meta'."""
    sys.path.insert(0, str(comfy_dir))
    from comfy.cli_args import args

    args.cpu = True
    import torch
    import comfy.clip_model
    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    if controlnet is not None:
        import comfy.cldm.cldm

        settings = {k: v for k, v in TINY_UNET.items() if k not in ("out_channels", "transformer_depth_output")}
        net = comfy.cldm.cldm.ControlNet(in_channels=in_channels, device="meta", operations=ops, **settings, **controlnet)
        return {"control_model." + key: tuple(tensor.shape) for key, tensor in net.state_dict().items()}
    if unet_only is not None:
        unet = UNetModel(in_channels=in_channels, device="meta", operations=ops, **{**TINY_UNET, **unet_only})
        return {key: tuple(tensor.shape) for key, tensor in unet.state_dict().items()}
    unet = UNetModel(in_channels=in_channels, device="meta", operations=ops, **unet)
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=SD_VAE, embed_dim=4)
    clip_config = json.loads((comfy_dir / "comfy" / "sd1_clip_config.json").read_text())
    clip = comfy.clip_model.CLIPTextModel(clip_config, None, "meta", ops)
    shapes = {}
    for prefix, module in (
        ("model.diffusion_model.", unet),
        ("first_stage_model.", vae),
        ("cond_stage_model.transformer.", clip),
    ):
        for key, tensor in module.state_dict().items():
            shapes[prefix + key] = tuple(tensor.shape)
    return shapes


def init_tensor(name: str, shape: tuple):
    """Deterministic per name: weights ~ N(0, 1/fan_in), 1-d norm weights 1, biases 0."""
    import torch

    if name.endswith("text_projection.weight"):
        return torch.eye(shape[0], dtype=torch.float16)
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=torch.float16)
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.float16)
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    seed = (SEED + int(hashlib.sha256(name.encode()).hexdigest()[:12], 16)) % (2**63)
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) / fan_in**0.5).to(torch.float16)


def write_checkpoint(comfy_dir: pathlib.Path, path: pathlib.Path, in_channels: int, unet_only: dict | None = None,
                     controlnet: dict | None = None, unet: dict = TINY_UNET) -> bool:
    from safetensors import safe_open
    from safetensors.torch import save_file

    wanted = spec_hash(in_channels, unet_only, controlnet, unet)
    if path.exists():
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("smoothvideo_spec_hash") == wanted:
                return False
    tensors = {name: init_tensor(name, shape)
               for name, shape in layout(comfy_dir, in_channels, unet_only, controlnet, unet).items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"smoothvideo_spec_hash": wanted, "note": "random weights, for tests"})
    tmp.replace(path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy", type=pathlib.Path, required=True, help="the ComfyUI folder")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="models/checkpoints folder")
    parser.add_argument("--unet-out", type=pathlib.Path, help="models/diffusion_models folder (UNet-only files)")
    parser.add_argument("--controlnet-out", type=pathlib.Path, help="models/controlnet folder")
    parser.add_argument("--full-size", action="store_true",
                        help=f"write only {FULL_SIZE} (SD1.5's full-size UNet, ~1.7 GB; for the benchmarks)")
    options = parser.parse_args()
    files = [(options.out / name, in_channels, None, None, TINY_UNET) for name, in_channels in CHECKPOINTS.items()]
    if options.unet_out:
        files += [(options.unet_out / name, 4, spec, None, TINY_UNET) for name, spec in UNET_ONLY.items()]
    if options.controlnet_out:
        files += [(options.controlnet_out / name, 4, None, spec, TINY_UNET) for name, spec in CONTROLNETS.items()]
    if options.full_size:
        files = [(options.out / FULL_SIZE, 4, None, None, SD15_UNET)]
    for path, in_channels, unet_only, controlnet, unet in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        written = write_checkpoint(options.comfy.resolve(), path, in_channels, unet_only, controlnet, unet)
        print(f"make_tiny_checkpoints: {path} {'written' if written else 'up to date'}")


if __name__ == "__main__":
    main()
