"""MNIST flow matching: pure PyTorch, no torchvision, no HTTP/Redis.

Notation everywhere: ``x_0`` noise, ``x_1`` data, ``x_t = (1 - t) x_0 + t x_1``, t from 0 (noise) to
1 (data), target velocity ``x_1 - x_0``.

Modules (imports point down; nothing is imported here so ``import models.flow`` stays cheap):

- ``unet``        -- ``UNetConfig``, ``FlowUNet`` (variants "none" / "time" / "class"), its blocks.
- ``objectives``  -- flow-matching and one-step-denoiser losses, CFG label dropout.
- ``sampling``    -- Euler / Heun / midpoint solvers (``SOLVERS``), ``ClassifierFreeGuidance``, ``generate``.
- ``checkpoint``  -- ``save_model``, ``load_model``, ``CheckpointError``; fp16 export CLI.
- ``grid``        -- ``make_grid`` (tensor in, tensor out).
- ``data``        -- MNIST IDX reader (gzip), md5 check, optional download.
- ``training``    -- the seeded training loop; ``train`` is its CLI (run folder, PNGs).
- ``denoise``     -- one-step denoiser experiments (sigma sweep, average digit) + CLI.
- ``classifier``, ``frechet``, ``evaluate`` -- the evaluator (accuracy, Frechet distance) + CLI.
- ``pngio``       -- PNG writing with PIL, imported by the CLIs only.
"""
