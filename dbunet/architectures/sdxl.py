"""An SDXL base folder deployed as it is: two text encoders, micro-conditioning; no boxes, no refiner stage."""

from dbunet.architectures.base import Architecture

SDXL = Architecture(
    name="sdxl",
    summary="an SDXL base UNet: two text encoders and micro-conditioning (no boxes, no refiner)",
    boxes=False,
    refiner=False,
    unet_config="SDXLUNetConfig",
    needs_folder="unet",
    text_encoders=2,
    micro_conditioning=True,
)
