"""The DB-UNet cascade: dual cross-attention and layout boxes, then the DiffuseGAE refiner (docs/architecture.md 3)."""

from dbunet.architectures.base import Architecture

DBUNET = Architecture(
    name="dbunet",
    summary="the DB-UNet cascade: text and layout boxes, then the DiffuseGAE refiner",
    boxes=True,
    refiner=True,
    unet_config="DBUNetConfig",
)
