"""Deployable artifacts of a trained model: a TensorFlow SavedModel and TFLite flatbuffers, checked against Keras.

* :mod:`imagegen.export.graph`: the serving function of each family, always TensorFlow, saved as a SavedModel
  whose ``serving_default`` signature maps noise to uint8 images ``(B, H, W, C)`` with a dynamic batch:

  - DCGAN (generator) and VAE (decoder): ``z`` float32 ``(B, latent_dim)``, plus ``label`` int32 ``(B,)``
    for a conditional DCGAN;
  - DDPM: ``x_T`` float32 ``(B, H, W, C)`` (plus ``label`` when conditional); the whole deterministic DDIM
    loop (eta = 0, ``export.ddpm_steps`` steps, ``sample.clip_x0``) is unrolled in the graph around the EMA
    U-Net, with the per-step coefficients computed on the host in float64 exactly as
    :func:`imagegen.models.diffusion.ddim_sample` does.

  The output is ``images`` = ``round((x + 1) * 127.5)`` clipped to 0..255, as
  :func:`imagegen.data.loader.to_uint8`.
* :mod:`imagegen.export.tflite`: SavedModel -> ``float32`` / ``float16`` / dynamic-range ``int8`` TFLite,
  builtin ops only; a graph needing a TF (Flex) or custom op is refused with an
  :class:`imagegen.errors.ExportError` naming the op(s).
* :mod:`imagegen.export.workers`: worker processes that convert a diffusion export's TFLite variants side by
  side (a conversion is single-threaded); :mod:`imagegen.export.signature`: the signature's names, without Keras.
* :mod:`imagegen.export.parity`: runs every artifact on fixed seeded inputs and compares it with the Keras
  model (max abs error in uint8 levels, mean SSIM), measures latency per image and size on disk.

The stage that ties them together is :func:`imagegen.stages.export.run_export`. Everything here needs the
TensorFlow backend of Keras (``KERAS_BACKEND=tensorflow``, the default); TFLite models are run with LiteRT's
``ai_edge_litert.interpreter.Interpreter`` when it is installed, else ``tf.lite.Interpreter``.
"""
