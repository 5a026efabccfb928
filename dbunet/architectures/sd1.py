"""A Stable Diffusion 1.x/2.x folder deployed as it is: its own UNet, VAE and text encoder; no boxes, no refiner."""

from dbunet.architectures.base import Architecture

SD1 = Architecture(
    name="sd1",
    summary="a plain Stable Diffusion 1.x/2.x UNet (no boxes, no refiner)",
    boxes=False,
    refiner=False,
    unet_config="SDUNetConfig",
    needs_folder="unet",
)
