"""The harmonization model, in separate parts.

- :mod:`.schedule`: noise schedule math (betas, alpha-bar, respacing, DDIM update),
  numpy float64, no network;
- :mod:`.unet`: the 2D denoising UNet (site embedding, anatomical condition);
- :mod:`.condition`: the anatomical condition encoder;
- :mod:`.sampler`: skip sampling (respaced deterministic DDIM, optional partial start).
"""
