"""A tiny random transformers CLIPModel saved as a user's CLIP folder would be (the LOVEU metric
tests and the batch evaluation's): 2 layers of width 32, patch 32 at 224 px, a character-level
CLIPTokenizer (no merges) and the benchmark's image-processor settings (openai/clip-vit-large-patch14's)."""

from __future__ import annotations

import json
import math
import pathlib

import torch

MEAN = [0.48145466, 0.4578275, 0.40821073]  # openai/clip-vit-large-patch14's preprocessor_config.json
STD = [0.26862954, 0.26130258, 0.27577711]
CROP = 224


def save_tiny_clip(folder: pathlib.Path, logit_scale: float = 37.0, mean=MEAN, std=STD, crop: int = CROP) -> pathlib.Path:
    """Writes the model, tokenizer and processor to `folder`; `logit_scale` other than CLIP's 100
    so that a test notices a fixed 100 standing in for the model's own scale."""
    import transformers

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = {}
    for token in chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}, image_mean=mean, image_std=std
    )
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(image_size=crop, patch_size=32, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=24,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
    model.save_pretrained(folder)
    return folder
