"""jaxflowaug: semantic data augmentation in the latent space of a normalizing flow."""
