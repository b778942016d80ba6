"""The toy prior: a tiny text-to-image model with Stable Diffusion's architecture, trained on toy renders.

- :mod:`.model`: the components (all standard diffusers / transformers classes, saved as a
  StableDiffusionPipeline folder): ``UNet2DConditionModel`` (cross-attention down/mid/up blocks,
  linear projections like SD 2), ``AutoencoderKL`` (4 latent channels, x4 down-sampling: 64x64
  images <-> 16x16 latents), ``CLIPTextModel`` (77 positions) with the toy ``CLIPTokenizer``
  (tokenizer.py), and a ``DDPMScheduler`` configured like SD 2.1 (v-prediction, scaled-linear betas
  0.00085 -> 0.012, 1000 steps); saving, loading, sampling and the sanity grid.
- :mod:`.data`: renders made on the fly (random objects x random views, on the GPU when there is
  one), their captions and token ids, and the latent pool the UNet trains from.
- :mod:`.training`: :func:`~.training.train_prior`: the VAE first (L1 + MSE + a small KL), then the
  UNet jointly with the text encoder (v-prediction MSE with min-SNR weighting, 10% empty captions
  for classifier-free guidance, EMA weights are the ones saved), bf16 autocast on CUDA; and the
  command line, ``python -m viewneti_backend.toyworld.prior --out DIR ...``.

Object seeds: training objects use seeds ``[0, n_objects)``; seeds from
:data:`.model.HELDOUT_SEED_START` on are never seen by the prior (use them for held-out benchmarks).
"""
