"""The PyTorch reference models: DB-UNet, VAE, text encoder, DiffuseGAE refiner, and TorchPipeline."""
