"""Networks (UNet, MLP) and the preconditioning that turns any of them into a consistency or EDM function."""
