"""Networks (UNet2DModel, MLP, the EDM / EDM2 UNets), their presets, and the preconditioning that turns any of them
into a consistency or EDM function."""
