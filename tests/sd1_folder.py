"""A small random Stable Diffusion 1.x folder, saved as diffusers saves one (no hub access here)."""
import json

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizerFast

from dbunet.tokenizer import learn_bpe, write_clip_tokenizer

SIZE = 64  # image side; the VAE has f = 4, so the latent is 16 x 16


def make_sd_folder(root, prediction_type="epsilon", seed=0):
    """A small random SD 1.x pipeline (f = 4 VAE, 2-level UNet, 2-layer CLIP) saved as diffusers saves one."""
    torch.manual_seed(seed)
    vocab, merges = learn_bpe(1024)
    tok_dir = write_clip_tokenizer(root / "_tok", vocab, merges)
    # from_pretrained: the constructor's file arguments differ between transformers 4 and 5
    tokenizer = CLIPTokenizerFast.from_pretrained(str(tok_dir), model_max_length=77)
    assert len(tokenizer) == 1024, "the tokenizer did not read its vocabulary"
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos))
    vae = AutoencoderKL(block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8,
                        layers_per_block=1, scaling_factor=0.5)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 4, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4)
    with torch.no_grad():  # random init predicts almost nothing; make the UNet's output matter
        unet.conv_out.weight.mul_(20.0)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(root / "sd")
    return root / "sd"


def set_pad_token(tokenizer_dir, token):
    """The folder's tokenizer pads with `token`: in tokenizer_config.json and, where transformers 4 wrote one,
    special_tokens_map.json (which wins over the config there, as in dbunet's reading)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = tokenizer_dir / name
        if path.is_file():
            path.write_text(json.dumps({**json.loads(path.read_text()), "pad_token": token}))


def other_clip_layout(state: dict, at: str = "") -> dict:
    """The keys of the CLIPTextModel at `at` as the other transformers release names them: under `text_model.`
    (transformers 4, every Hub folder) or without it (transformers 5)."""
    def flip(key: str) -> str:
        if not key.startswith(at):
            return key
        rest = key[len(at):]
        return at + (rest.removeprefix("text_model.") if rest.startswith("text_model.") else "text_model." + rest)
    return {flip(k): v for k, v in state.items()}
