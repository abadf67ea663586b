"""Inflate UNet and DDIM Invert Video in a real ComfyUI server, sampled with stock nodes."""

import uuid

import pytest
import torch
from safetensors.torch import load_file

from comfy_host import ComfyError, node_output
from graphs import invert_graph, tiny_unet_weights, tune_graph

pytestmark = pytest.mark.integration
CKPT = "smoothvideo_tiny_sd15.safetensors"


def saved_latent(server, entry, node_id):
    item = node_output(entry, node_id)["latents"][0]
    return load_file(str(server.base / "output" / item["subfolder"] / item["filename"]))["latent_tensor"]


def sampling_prompt(video, inflate: str | None, identical_frames: bool, steps: int = 3,
                    group_norm: str = "per_frame") -> dict:
    """Frames -> VAE Encode -> (Inflate UNet) -> SamplerCustom (no added noise, ddim) -> Save Latent.
    With per-frame group norm the untuned video model is the 2D model wherever frames agree."""
    model = ["9", 0] if inflate else ["4", 0]
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": video}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "SmoothVideo_SelectVideoFrames", "inputs": {"images": ["2", 0], "start": 0, "count": 1 if identical_frames else 4, "stride": 2, "width": 64, "height": 64}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["4", 2]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red ball", "clip": ["4", 1]}},
        "8": {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": 4 if identical_frames else 1}},
        "13": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
        "14": {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": "ddim_uniform", "steps": steps, "denoise": 1.0}},
        "12": {"class_type": "SamplerCustom", "inputs": {"model": model, "add_noise": False, "noise_seed": 1, "cfg": 3.0, "positive": ["7", 0], "negative": ["6", 0], "sampler": ["13", 0], "sigmas": ["14", 0], "latent_image": ["5", 0]}},
        "20": {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": f"test/{uuid.uuid4().hex[:8]}"}},
    }
    if inflate:
        prompt["9"] = {"class_type": "SmoothVideo_InflateUNet", "inputs": {"model": ["4", 0], "attention": inflate, "group_norm": group_norm}}
    return prompt


@pytest.mark.parametrize("attention", ["sparse_causal", "cross_frame"])
def test_inflated_model_equals_2d_model_on_a_still_video(server, sample_video, attention):
    plain = saved_latent(server, server.run(sampling_prompt(sample_video[0], None, True)), "20")
    video = saved_latent(server, server.run(sampling_prompt(sample_video[0], attention, True)), "20")
    assert plain.shape == video.shape == (4, 4, 8, 8)
    # ComfyUI's and the diffusers float32 UNet, 3 steps: ~17 eps of the latents' scale (~36) measured; 2e-5 = ~170 eps.
    assert (video - plain).abs().max() <= 2e-5 * plain.abs().max()


def test_video_group_norm_by_default_mixes_frames_as_tune_a_video(server, sample_video):
    per_frame = saved_latent(server, server.run(sampling_prompt(sample_video[0], "sparse_causal", False)), "20")
    prompt = sampling_prompt(sample_video[0], "sparse_causal", False)
    del prompt["9"]["inputs"]["group_norm"]  # the default: Tune-A-Video's group norm over all frames
    video = saved_latent(server, server.run(prompt), "20")
    # Frame 0 attends only to itself, but its group norms take their statistics from all four frames.
    assert (video[0] - per_frame[0]).abs().max() > 1e-2 * per_frame.abs().max()


def test_inflated_model_is_what_the_stock_sampler_runs(server, sample_video):
    plain = saved_latent(server, server.run(sampling_prompt(sample_video[0], None, False)), "20")
    video = saved_latent(server, server.run(sampling_prompt(sample_video[0], "sparse_causal", False)), "20")
    # Different frames: frame 0 attends only to itself in both, later frames see other frames.
    assert (video[0] - plain[0]).abs().max() <= 2e-5 * plain.abs().max()  # two float32 UNets: ~170 eps of the scale
    assert (plain[1:] - video[1:]).abs().max() > 1e-2 * plain.abs().max()  # measured ~0.16 of the scale


LORA_LAYERS = {  # the tiny UNet's Linear layers a test LoRA changes: name -> (out, in)
    "input_blocks_1_1_transformer_blocks_0_attn1_to_k": (320, 320),
    "input_blocks_1_1_transformer_blocks_0_attn1_to_v": (320, 320),
    "output_blocks_0_1_transformer_blocks_0_attn2_to_v": (320, 768),
}


@pytest.fixture(scope="module")
def lora(server):
    """A rank-4 LoRA (kohya key format) for the tiny SD1.5 UNet in models/loras/."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(5)
    tensors = {}
    for name, (out_features, in_features) in LORA_LAYERS.items():
        tensors[f"lora_unet_{name}.lora_down.weight"] = torch.randn(4, in_features, generator=generator) * 0.2
        tensors[f"lora_unet_{name}.lora_up.weight"] = torch.randn(out_features, 4, generator=generator) * 0.2
        tensors[f"lora_unet_{name}.alpha"] = torch.tensor(4.0)
    folder = server.base / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "smoothvideo_test_lora.safetensors"))
    return "smoothvideo_test_lora.safetensors"


def with_lora(prompt: dict, lora: str, strength: float = 1.0) -> dict:
    """The prompt's MODEL goes through LoraLoaderModelOnly before Inflate UNet and the sampler."""
    prompt["30"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["4", 0], "lora_name": lora, "strength_model": strength}}
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if value == ["4", 0] and node is not prompt["30"]:
                node["inputs"][name] = ["30", 0]
    return prompt


def test_a_lora_before_inflate_unet_is_carried_into_the_video_model(server, sample_video, lora):
    # First a video MODEL is loaded (its patches then sit in the checkpoint's shared BaseModel):
    # the LoRA loader below must still find the UNet's keys.
    server.run(sampling_prompt(sample_video[0], "sparse_causal", True, steps=2))
    plain_lora = saved_latent(server, server.run(with_lora(sampling_prompt(sample_video[0], None, True), lora)), "20")
    video_lora = saved_latent(server, server.run(with_lora(sampling_prompt(sample_video[0], "sparse_causal", True), lora)), "20")
    assert (video_lora - plain_lora).abs().max() <= 2e-5 * plain_lora.abs().max()  # two float32 UNets: ~170 eps of the scale
    # The LoRA's clone is still loaded, its weights patched in place in the shared UNet: a plain
    # MODEL inflated now must not pick them up.
    video = saved_latent(server, server.run(sampling_prompt(sample_video[0], "sparse_causal", True)), "20")
    plain = saved_latent(server, server.run(sampling_prompt(sample_video[0], None, True)), "20")
    assert (video - plain).abs().max() <= 2e-5 * plain.abs().max()  # two float32 UNets: ~170 eps of the scale
    assert (video_lora - video).abs().max() > 1e-2 * video.abs().max()  # the LoRA does change the result (~0.5 of the scale)


def test_controlvideo_starts_its_temporal_attention_from_the_checkpoints_attn1_under_a_loaded_lora(
        server, sample_video, lora):
    """Inflate UNet (ControlVideo) copies each block's attn1 into attn_temp. With a LoRA before it
    whose clone is still loaded from an earlier run (its weights patched in place in the shared UNet),
    the copy is the checkpoint's tensor (from ComfyUI's backup), not the LoRA-patched one."""
    server.run(with_lora(sampling_prompt(sample_video[0], None, False), lora))  # leaves the LoRA'd clone loaded
    save_name = f"test_cv_init_{uuid.uuid4().hex[:6]}"
    prompt = with_lora(tune_graph(sample_video[0], learning_rate=1e-7, lambda2=0.0), lora)
    prompt["9"] = {"class_type": "SmoothVideo_InflateControlVideo", "inputs": {"model": ["30", 0], "key_frame": 0}}
    prompt["10"]["inputs"]["save_name"] = save_name
    server.run(prompt)
    tuned = load_file(str(server.base / "models" / "smoothvideo" / f"{save_name}.safetensors"))
    start = tiny_unet_weights(server)
    for name in ("to_k", "to_v"):  # the layers the LoRA changes in this block
        copy = tuned[f"down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.{name}.weight"]
        checkpoint = start[f"input_blocks.1.1.transformer_blocks.0.attn1.{name}.weight"].float()
        # One AdamW step at lr 1e-7 moves it by ~1e-7; the LoRA changes these weights by ~0.1.
        assert (copy - checkpoint).abs().max() <= 1e-5, name


def test_a_lora_after_inflate_unet_acts_on_the_video_model_as_before_it(server, sample_video, lora):
    before = saved_latent(server, server.run(with_lora(sampling_prompt(sample_video[0], "sparse_causal", True), lora)), "20")
    prompt = sampling_prompt(sample_video[0], "sparse_causal", True)
    prompt["30"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["9", 0], "lora_name": lora, "strength_model": 1.0}}
    prompt["12"]["inputs"]["model"] = prompt["14"]["inputs"]["model"] = ["30", 0]
    after = saved_latent(server, server.run(prompt), "20")
    # The same weight patches on the same UNet in either order: equal but for summation order.
    assert (after - before).abs().max() <= 64 * 2.0**-23 * before.abs().max()
    video = saved_latent(server, server.run(sampling_prompt(sample_video[0], "sparse_causal", True)), "20")
    assert (after - video).abs().max() > 1e-2 * video.abs().max()  # the LoRA does act (~0.5 of the scale)


def test_tuned_weights_load_only_onto_the_loras_they_were_tuned_with(server, sample_video, lora):
    """The base model's fingerprint cannot see a LoRA: the MODEL's LoRAs are recorded apart."""
    def tuned(with_the_lora: bool) -> str:
        prompt = tune_graph(sample_video[0])
        if with_the_lora:
            with_lora(prompt, lora)
        server.run(prompt)
        return prompt["10"]["inputs"]["save_name"] + ".safetensors"

    def load_and_invert(weights: str, with_the_lora: bool, strength: float = 1.0) -> dict:
        prompt = invert_graph(sample_video[0])
        prompt["10"] = {"class_type": "SmoothVideo_LoadTunedVideoWeights", "inputs": {"model": ["9", 0], "weights": weights}}
        prompt["11"]["inputs"]["model"] = ["10", 0]
        return with_lora(prompt, lora, strength) if with_the_lora else prompt

    lora_weights, plain_weights = tuned(True), tuned(False)
    assert node_output(server.run(load_and_invert(lora_weights, True)), "12")["latents"]
    assert node_output(server.run(load_and_invert(plain_weights, False)), "12")["latents"]
    for weights, with_the_lora, strength, problem in [
        (lora_weights, False, 1.0, "with LoRAs .* but this MODEL has none"),
        (plain_weights, True, 1.0, "without LoRAs, but this MODEL has LoRAs"),
        (lora_weights, True, 0.5, "with other LoRAs \\(or other strengths\\)"),
    ]:
        with pytest.raises(ComfyError, match=f"tuned on this checkpoint {problem}.*same strengths"):
            server.run(load_and_invert(weights, with_the_lora, strength))


def with_pag(prompt: dict, model: list) -> dict:
    """Stock PerturbedAttentionGuidance (its own attn1 replacement on the middle block, for a
    second pass after CFG) on `model`, in front of the sampler."""
    prompt["31"] = {"class_type": "PerturbedAttentionGuidance", "inputs": {"model": model, "scale": 3.0}}
    prompt["12"]["inputs"]["model"] = ["31", 0]
    return prompt


def test_perturbed_attention_guidance_acts_on_the_video_model_as_on_the_plain_one(server, sample_video):
    """Before the video model was patches on ComfyUI's UNet, PAG after Inflate UNet changed nothing
    (largest difference 0) while it changed the plain model's output."""
    changes = {}
    for inflate, model in ((None, ["4", 0]), ("sparse_causal", ["9", 0])):
        without = saved_latent(server, server.run(sampling_prompt(sample_video[0], inflate, False)), "20")
        pag = saved_latent(server, server.run(with_pag(sampling_prompt(sample_video[0], inflate, False), model)), "20")
        changes[inflate] = (pag - without).abs().max().item() / without.abs().max().item()
    assert changes[None] > 1e-2 and changes["sparse_causal"] > 1e-2, changes


def test_inflating_twice_is_refused(server, sample_video):
    prompt = sampling_prompt(sample_video[0], "sparse_causal", True)
    prompt["10"] = {"class_type": "SmoothVideo_InflateUNet", "inputs": {"model": ["9", 0], "attention": "sparse_causal"}}
    prompt["14"]["inputs"]["model"] = prompt["12"]["inputs"]["model"] = ["10", 0]
    with pytest.raises(ComfyError, match="already inflated"):
        server.run(prompt)


def reconstruction(server, video, steps):
    """Invert with "" and sample back with "" at CFG 1 along the same DDIM steps:
    (mean |noise - source|, mean |rebuilt - source|)."""
    prompt = sampling_prompt(video, "sparse_causal", False, steps=steps)
    prompt["11"] = {"class_type": "SmoothVideo_DDIMInvertVideo", "inputs": {"model": ["9", 0], "latent": ["5", 0], "conditioning": ["6", 0], "steps": steps}}
    prompt["12"]["inputs"].update(latent_image=["11", 0], positive=["6", 0], cfg=1.0)
    prompt["21"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"test/{uuid.uuid4().hex[:8]}"}}
    prompt["22"] = {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": f"test/{uuid.uuid4().hex[:8]}"}}
    entry = server.run(prompt)
    source, noise, rebuilt = (saved_latent(server, entry, n) for n in ("21", "22", "20"))
    assert noise.shape == rebuilt.shape == source.shape
    return (noise - source).abs().mean().item(), (rebuilt - source).abs().mean().item()


def test_ddim_inversion_then_sampling_converges_to_the_video(server, sample_video):
    """The inverted noise continues exactly where ComfyUI's ddim sampler starts: the round
    trip error is DDIM's discretisation error, which shrinks with the step count. (The
    random-weight model's noise prediction changes fast with x, so even 100 steps leave an
    error; a scaling or timestep mismatch would leave an error that does not shrink.)"""
    far_20, error_20 = reconstruction(server, sample_video[0], 20)
    far_100, error_100 = reconstruction(server, sample_video[0], 100)
    assert far_20 > 5 * error_20 and far_100 > 5 * error_100
    assert error_100 < 0.6 * error_20


CONTROLNET = "smoothvideo_tiny_controlnet_sd15.safetensors"  # scripts/make_tiny_checkpoints.py writes it


def with_controlnet(prompt: dict, positive: list, negative: list, image: list, users: list[tuple[str, str, int]]) -> dict:
    """Stock Load ControlNet Model + Apply ControlNet on (positive, negative) with `image` as the hint
    (every frame its own); `users` are the (node, input, output of Apply ControlNet) to rewire."""
    prompt["40"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CONTROLNET}}
    prompt["41"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": positive, "negative": negative, "control_net": ["40", 0], "image": image,
        "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    for node, name, output in users:
        prompt[node]["inputs"][name] = ["41", output]
    return prompt


def test_a_controlnet_acts_on_the_video_model_in_sampling_as_on_the_plain_one(server, sample_video):
    """Before, a ControlNet was refused on an inflated model ("not supported ... yet")."""
    changes = {}
    for inflate in (None, "sparse_causal"):
        without = saved_latent(server, server.run(sampling_prompt(sample_video[0], inflate, False)), "20")
        prompt = with_controlnet(sampling_prompt(sample_video[0], inflate, False), ["7", 0], ["6", 0], ["8", 0],
                                 [("12", "positive", 0), ("12", "negative", 1)])
        controlled = saved_latent(server, server.run(prompt), "20")
        changes[inflate] = (controlled - without).abs().max().item() / without.abs().max().item()
    assert changes[None] > 1e-2 and changes["sparse_causal"] > 1e-2, changes


def test_a_controlnet_on_the_positive_takes_part_in_tuning_and_in_inversion(server, sample_video):
    def first_mse(prompt):
        return node_output(server.run(prompt), "10")["losses"][0][1]

    plain = first_mse(tune_graph(sample_video[0], seed=3))
    controlled = first_mse(with_controlnet(tune_graph(sample_video[0], seed=3), ["6", 0], ["8", 0], ["3", 0],
                                           [("10", "positive", 0)]))
    # Same seed: the same noise and timestep; only the ControlNet's residuals differ.
    assert abs(controlled - plain) > 1e-3 * plain, (plain, controlled)

    inverted = saved_latent(server, server.run(invert_graph(sample_video[0])), "12")
    prompt = with_controlnet(invert_graph(sample_video[0]), ["8", 0], ["8", 0], ["3", 0], [("11", "conditioning", 0)])
    inverted_controlled = saved_latent(server, server.run(prompt), "12")
    assert (inverted_controlled - inverted).abs().max() > 1e-2 * inverted.abs().max()


def test_cross_frame_chunks_slice_the_controlnet_residuals_with_the_frames(server, sample_video):
    """Cross-frame Attention runs long videos in chunks led by frame 0: the ControlNet's residuals
    (computed for the whole batch) are cut with the frames, so chunks change nothing but memory."""
    outputs = []
    for chunk_size in (2, 8):
        prompt = with_controlnet(sampling_prompt(sample_video[0], "cross_frame", False), ["7", 0], ["6", 0], ["8", 0],
                                 [("12", "positive", 0), ("12", "negative", 1)])
        prompt["9"] = {"class_type": "SmoothVideo_CrossFrameAttention", "inputs": {"model": ["4", 0], "chunk_size": chunk_size}}
        outputs.append(saved_latent(server, server.run(prompt), "20"))
    chunked, whole = outputs
    assert chunked.shape[0] == 4  # 4 frames: chunks [0, 1], [0, 2], [0, 3]
    assert (chunked - whole).abs().max() <= 64 * 2.0**-23 * whole.abs().max()


TWO_LEVEL_UNET = "smoothvideo_tiny_sd15_two_level_unet.safetensors"  # models/diffusion_models, 320 + 640 channels


def test_freeu_acts_on_the_video_model_as_on_the_plain_one(server, sample_video):
    """A stock block patch (FreeU scales the 640-channel output blocks' features and skips)."""
    changes = {}
    for inflate in (None, "sparse_causal"):
        outputs = []
        for freeu in (False, True):
            prompt = sampling_prompt(sample_video[0], inflate, False)
            prompt["32"] = {"class_type": "UNETLoader", "inputs": {"unet_name": TWO_LEVEL_UNET, "weight_dtype": "default"}}
            model = ["32", 0]
            if freeu:
                prompt["33"] = {"class_type": "FreeU", "inputs": {"model": model, "b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}}
                model = ["33", 0]
            if inflate:
                prompt["9"]["inputs"]["model"] = model
                model = ["9", 0]
            prompt["12"]["inputs"]["model"] = prompt["14"]["inputs"]["model"] = model
            outputs.append(saved_latent(server, server.run(prompt), "20"))
        without, with_freeu = outputs
        changes[inflate] = (with_freeu - without).abs().max().item() / without.abs().max().item()
    assert changes[None] > 1e-2 and changes["sparse_causal"] > 1e-2, changes


def test_hypertile_which_moves_tiles_into_the_batch_is_refused_with_its_name(server, sample_video):
    """HyperTile splits every frame's tokens into tiles along the batch axis: the frame attention
    would take tiles for frames (a silently wrong video), so the video model refuses it."""
    prompt = sampling_prompt(sample_video[0], "sparse_causal", False)
    prompt["34"] = {"class_type": "HyperTile", "inputs": {"model": ["9", 0], "tile_size": 32, "swap_size": 1,
                                                          "max_depth": 0, "scale_depth": False}}
    prompt["12"]["inputs"]["model"] = ["34", 0]
    with pytest.raises(ComfyError, match="changed the self-attention's batch.*HyperTile"):
        server.run(prompt)
    plain = sampling_prompt(sample_video[0], None, False)  # on the plain model it runs
    plain["34"] = dict(prompt["34"], inputs=dict(prompt["34"]["inputs"], model=["4", 0]))
    plain["12"]["inputs"]["model"] = ["34", 0]
    assert node_output(server.run(plain), "20") is not None


def test_sampling_guidance_on_the_model_being_tuned_is_refused_with_where_it_goes(server, sample_video):
    """Self-Attention Guidance (a post-CFG function) between Inflate UNet and One-shot Tune: tuning
    runs without CFG, where it failed with "'NoneType' object has no attribute 'shape'"."""
    prompt = tune_graph(sample_video[0], steps=1)
    prompt["35"] = {"class_type": "SelfAttentionGuidance", "inputs": {"model": ["9", 0], "scale": 2.0, "blur_sigma": 2.0}}
    prompt["10"]["inputs"]["model"] = ["35", 0]
    with pytest.raises(ComfyError, match="sampling guidance .* apply that node to One-shot Tune's tuned_model"):
        server.run(prompt)


def test_sampling_guidance_on_the_model_being_inverted_is_refused_with_where_it_goes(server, sample_video):
    """PerturbedAttentionGuidance (a post-CFG function) before DDIM Invert Video: the inversion runs
    the model without CFG, where ComfyUI never calls such functions; it was skipped without a word."""
    prompt = invert_graph(sample_video[0])
    prompt["35"] = {"class_type": "PerturbedAttentionGuidance", "inputs": {"model": ["9", 0], "scale": 3.0}}
    prompt["11"]["inputs"]["model"] = ["35", 0]
    with pytest.raises(ComfyError, match="DDIM Invert Video: this MODEL carries sampling guidance .* connect DDIM "
                                         "Invert Video to the MODEL before that node"):
        server.run(prompt)


def test_an_attn1_replacement_before_inflate_unet_is_refused_with_where_it_goes(server, sample_video):
    """A node that replaces a whole block's self-attention (test probe: plain attention on the middle
    block) before Inflate UNet: the frame attention would have been dropped there, or theirs."""
    prompt = sampling_prompt(sample_video[0], "sparse_causal", False)
    prompt["36"] = {"class_type": "SmoothVideoTest_ReplaceAttn1", "inputs": {"model": ["4", 0]}}
    prompt["9"]["inputs"]["model"] = ["36", 0]
    with pytest.raises(ComfyError, match="already replaces the self-attention of middle 0.*apply that node after"):
        server.run(prompt)
    prompt["9"]["inputs"]["model"] = ["4", 0]  # after Inflate UNet it runs, theirs on that block
    prompt["36"]["inputs"]["model"] = ["9", 0]
    prompt["12"]["inputs"]["model"] = ["36", 0]
    assert node_output(server.run(prompt), "20") is not None


def test_loaded_tuned_weights_keep_an_attn1_replacement_added_after_inflating(server, sample_video):
    prompt = tune_graph(sample_video[0], steps=1)
    server.run(prompt)
    weights = prompt["10"]["inputs"]["save_name"] + ".safetensors"
    outputs = []
    for replace_first in (True, False):  # Inflate -> replace -> load, and Inflate -> load -> replace
        prompt = sampling_prompt(sample_video[0], "sparse_causal", False, group_norm="video")  # as tuned
        first, second = ("36", "37") if replace_first else ("37", "36")
        prompt["36"] = {"class_type": "SmoothVideoTest_ReplaceAttn1", "inputs": {}}
        prompt["37"] = {"class_type": "SmoothVideo_LoadTunedVideoWeights", "inputs": {"weights": weights}}
        prompt[first]["inputs"]["model"] = ["9", 0]
        prompt[second]["inputs"]["model"] = [first, 0]
        prompt["12"]["inputs"]["model"] = prompt["14"]["inputs"]["model"] = [second, 0]
        outputs.append(saved_latent(server, server.run(prompt), "20"))
    assert torch.equal(outputs[0], outputs[1])  # the same patches either way: the replacement was kept
