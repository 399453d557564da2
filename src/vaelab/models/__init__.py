"""Models: the VAE, its networks and likelihoods, the latent kinds and
their registry."""
