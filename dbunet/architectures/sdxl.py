"""An SDXL base folder deployed as it is: two text encoders, micro-conditioning, optionally SDXL's refiner (a second
UNet in latent space); no boxes, no DiffuseGAE refiner."""

from dbunet.architectures.base import Architecture

SDXL = Architecture(
    name="sdxl",
    summary="an SDXL base UNet, optionally with SDXL's refiner: two text encoders and micro-conditioning (no boxes)",
    boxes=False,
    refiner=False,
    unet_config="SDXLUNetConfig",
    needs_folder="unet",
    text_encoders=2,
    micro_conditioning=True,
    latent_refiner=True,
)
