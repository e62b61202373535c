"""Tiny random diffusers pipelines built in the tests (nothing downloaded): a DiT (class-conditional transformer +
VAE), a Stable Diffusion (text-conditional UNet + VAE + CLIP text encoder and a byte-level tokenizer) and a Stable
Diffusion 3 (flow-matching transformer + VAE with a shift factor + two CLIP text encoders with projections and a T5
encoder with a character-level tokenizer), saved with save_pretrained into a folder the harness loads as
diffusers:PATH."""
import json
from pathlib import Path

import torch

LATENT = (4, 8, 8)  # latent channels and size; the VAE decodes to 3 x 32 x 32 (LPIPS needs 32 px)


def _vae(scaling_factor=0.5, shift_factor=None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 16), latent_channels=4,
                         norm_num_groups=4, sample_size=32, scaling_factor=scaling_factor, shift_factor=shift_factor)


def _randomise(module, std, seed):
    """Random weights everywhere (a freshly built DiT is zero-initialised at its output: eps = 0 would test nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def build_dit(folder: Path) -> Path:
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                        norm_num_groups=1)
    _randomise(transformer, 0.02, seed=1)
    scheduler = DDIMScheduler(beta_schedule="linear", set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    DiTPipeline(transformer=transformer, vae=_vae(), scheduler=scheduler).save_pretrained(folder)
    return folder


def byte_tokenizer(folder: Path, max_length: int):
    """CLIP's tokenizer on a vocabulary of single bytes (no merges): every prompt tokenizes, offline."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(c) for c in printable] + [chr(256 + i) for i in range(len(others))]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length), vocab


def clip_text_config(vocab, hidden_size=16, **changes):
    """A 1-layer CLIP text encoder's config on the byte tokenizer's ``vocab`` (16 positions unless ``changes`` say)."""
    from transformers import CLIPTextConfig

    end = vocab["<|endoftext|>"]
    values = dict(vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                  num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                  bos_token_id=vocab["<|startoftext|>"], eos_token_id=end, pad_token_id=end)
    return CLIPTextConfig(**{**values, **changes})


def build_stable_diffusion(folder: Path) -> Path:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer, vocab = byte_tokenizer(folder.parent / f"{folder.name}-tokenizer-files", max_length=16)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(clip_text_config(vocab))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=4)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False,
                              steps_offset=1, clip_sample=False)  # Stable Diffusion 1.x's
    StableDiffusionPipeline(unet=unet, vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


def _character_t5_tokenizer(max_length: int):
    """T5's (fast) tokenizer on a Unigram vocabulary of the printable ASCII characters, built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(chr(c), -1.0) for c in range(32, 127)]
    unigram = Tokenizer(models.Unigram(pieces, unk_id=2))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    return T5TokenizerFast(tokenizer_object=unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=max_length), len(pieces)


def build_stable_diffusion_3(folder: Path, shift=3.0) -> Path:
    """SD3's layout: an SD3Transformer2DModel reading the CLIPs' and T5's sequence embeddings (32 wide: the CLIPs' 8
    + 8 padded, as the pipeline pads them, beside T5's 32) and the CLIPs' pooled projections (8 + 8); its
    FlowMatchEulerDiscreteScheduler with SD3's shift 3; a VAE with a shift factor."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tokenizer, vocab = byte_tokenizer(folder.parent / f"{folder.name}-tokenizer-files", max_length=16)
    t5_tokenizer, t5_vocab = _character_t5_tokenizer(max_length=16)
    torch.manual_seed(0)
    clips = [CLIPTextModelWithProjection(clip_text_config(vocab, hidden_size=8, projection_dim=8)) for _ in range(2)]
    t5 = T5EncoderModel(T5Config(vocab_size=t5_vocab, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16))
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                        caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=16)
    _randomise(transformer, 0.1, seed=1)  # its output layers start at zero; 0.1: outputs of order 1, prompts matter
    StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
                             vae=_vae(shift_factor=0.1), text_encoder=clips[0], tokenizer=tokenizer,
                             text_encoder_2=clips[1], tokenizer_2=tokenizer, text_encoder_3=t5,
                             tokenizer_3=t5_tokenizer).save_pretrained(folder)
    return folder


def build_clip(folder: Path) -> Path:
    """A tiny random CLIPModel with its CLIPProcessor (the byte tokenizer, 32 px images), for clip_score."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer, vocab = byte_tokenizer(folder.parent / f"{folder.name}-tokenizer-files", max_length=16)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=clip_text_config(vocab).to_dict(),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder
