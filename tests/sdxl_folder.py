"""A small random SDXL base folder, saved as diffusers saves one (no hub access here): two CLIP encoders (the
second with a projection), a tokenizer made on the spot (the second padding with "!"), a UNet with
addition_embed_type "text_time", an f = 4 VAE."""

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizerFast

from dbunet.tokenizer import learn_bpe, write_clip_tokenizer

SIZE = 64  # image side; the VAE has f = 4, so the latent is 16 x 16
TIME_DIM, PROJECTION = 8, 32


def make_sdxl_folder(root, seed=0):
    torch.manual_seed(seed)
    vocab, merges = learn_bpe(1024)
    tok_dir = write_clip_tokenizer(root / "_tok", vocab, merges)
    # from_pretrained: the constructor's file arguments differ between transformers 4 and 5
    tokenizer = CLIPTokenizerFast.from_pretrained(str(tok_dir), model_max_length=77)
    tokenizer_2 = CLIPTokenizerFast.from_pretrained(str(tok_dir), model_max_length=77, pad_token="!")
    assert len(tokenizer) == 1024, "the tokenizer did not read its vocabulary"
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    common = dict(vocab_size=1024, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
                  hidden_act="gelu")
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, **common))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=48, projection_dim=PROJECTION, **common))
    vae = AutoencoderKL(block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8,
                        layers_per_block=1, scaling_factor=0.5, force_upcast=True)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 4, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32 + 48, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=6 * TIME_DIM + PROJECTION)
    with torch.no_grad():  # random init predicts almost nothing; make the UNet's output matter
        unet.conv_out.weight.mul_(20.0)
        unet.add_embedding.linear_1.weight.mul_(5.0)  # and the micro-conditioning with it
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(root / "sdxl")
    return root / "sdxl"


def make_sdxl_refiner_folder(root, base, seed=1, aesthetic=True):
    """SDXL's refiner for `base` as diffusers saves one: no first text encoder or tokenizer, the base's second
    encoder, tokenizer and VAE, its own UNet attending to the second encoder alone (width 48) with 5 size-and-score
    numbers, requires_aesthetics_score and no force_zeros_for_empty_prompt (as the published refiner's folder).
    `aesthetic=False`: no score, its UNet taking the 6 size numbers (original size, crop, target size) instead."""
    torch.manual_seed(seed)
    numbers = 5 if aesthetic else 6
    parts = StableDiffusionXLPipeline.from_pretrained(base)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 4, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=48, attention_head_dim=(2, 4), transformer_layers_per_block=1,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=numbers * TIME_DIM + PROJECTION)
    with torch.no_grad():  # louder than the base's: its two of eight steps must show in the image
        unet.conv_out.weight.mul_(60.0)
        unet.add_embedding.linear_1.weight.mul_(5.0)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLImg2ImgPipeline(vae=parts.vae, text_encoder=None, text_encoder_2=parts.text_encoder_2,
                                            tokenizer=None, tokenizer_2=parts.tokenizer_2, unet=unet,
                                            scheduler=scheduler, requires_aesthetics_score=aesthetic,
                                            force_zeros_for_empty_prompt=False)
    pipe.save_pretrained(root / "sdxl-refiner")
    return root / "sdxl-refiner"
