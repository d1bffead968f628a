"""The serving function of each model family, in TensorFlow, and its SavedModel.

:func:`build_serving` turns a :class:`~imagegen.artifact.LoadedModel` into a :class:`Serving`: a Python
function of named tensors returning ``{"images": uint8 (B, H, W, C)}``, its input signature (dynamic batch)
and the Keras networks it reads. :func:`export_savedmodel` writes it with ``keras.export.ExportArchive``
under the signature ``serving_default``, the same bytes for the same model in every fresh process (the
SavedModel is a DVC-tracked output: its variables are numbered in a fixed order and its fingerprint's UUID
comes from its content, where TensorFlow would use memory addresses and a random draw).

DDPM: the deterministic DDIM loop (eta = 0) is unrolled, one U-Net call per step (two with
classifier-free guidance; the weights are stored once, each step adds only graph nodes). The grid,
the per-step coefficients (float64 on the host, baked in as float32 constants), the update and the
guidance are those of :mod:`imagegen.models.diffusion` (``ddim_grid``, ``ddim_plan``,
``ddim_update``, ``classifier_free_guidance``), traced here, not re-derived, so the exported graph
reproduces ``ddpm.generate(..., sampler="ddim", eta=0, x_T=...)``.

LDM: the same loop on the latent grid (input ``x_T`` is latent noise, no x0 clipping), then the frozen VAE
decoder of the model folder inside the graph: latent / scale_factor, flattened, decoded, as ``ldm.generate``.

Which of the two a model gets, and its inputs, follow from its family's declaration
(:class:`~imagegen.training.families.spec.FamilySpec`): ``diffusion``, ``noise_shape`` (``z`` or ``x_T``), the
first of its ``sampling_networks`` (a decoder family's generator), ``extra_inputs`` (a style-based generator's
per-pixel noise, after ``z`` and ``label``), ``decode_latents`` (a latent diffusion model's decoder) and the
section's ``conditional`` (a ``label`` input).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from imagegen.artifact import LoadedModel
from imagegen.errors import ConfigError
from imagegen.export.signature import OUTPUT, SIGNATURE, InputSpec
from imagegen.fileio import write_bytes
from imagegen.models.diffusion import (
    classifier_free_guidance,
    ddim_grid,
    ddim_plan,
    ddim_update,
    schedule_from_config,
)
from imagegen.training.families import family_spec


def require_tensorflow() -> None:
    """Export builds TensorFlow graphs: refuse any other Keras backend with a message saying what to do."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ConfigError(
            f"export needs the TensorFlow backend of Keras, but this process runs {backend!r}; "
            "run it with KERAS_BACKEND=tensorflow (weights trained under any backend load there)"
        )


@dataclass
class Serving:
    """What :func:`export_savedmodel` saves: ``fn(**inputs) -> {"images": uint8 tensor}``."""

    family: str
    fn: Callable[..., dict[str, Any]]
    inputs: list[InputSpec]
    networks: list[keras.Model]
    meta: dict[str, Any]

    def input_signature(self) -> list[Any]:
        import tensorflow as tf

        return [tf.TensorSpec((None, *spec.shape), tf.as_dtype(spec.dtype), name=spec.name) for spec in self.inputs]


# --------------------------------------------------------------------------------------------------
# Serving functions


def to_uint8_images(x: Any) -> Any:
    """float [-1, 1] -> uint8: round(x * 127.5 + 127.5) clipped to 0..255 (round half to even, as np.rint).

    One clip, after the affine map, and multiply before add: full-integer int8 TFLite quantizes a clip to [-1, 1]
    followed by ``(x + 1) * 127.5`` onto ~3 levels (the ADD inherits the MUL's output scale, ~1.0)."""
    import tensorflow as tf

    x = tf.cast(x, tf.float32) * 127.5 + 127.5
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _decoder_serving(loaded: LoadedModel) -> Serving:
    """One network call from z (and a label when class-conditioned): the family's first sampling network."""
    declared = family_spec(loaded.name)
    spec = loaded.family.spec
    net = loaded.family.networks[declared.sampling_networks[0]]
    conditional = bool(spec[loaded.name].get("conditional", False))
    inputs = [InputSpec("z", declared.noise_shape(spec), "float32")]
    if conditional:
        inputs.append(InputSpec("label", (), "int32"))
    if declared.extra_inputs is not None:  # e.g. per-pixel noise: the network takes [z, label?, *extras]
        inputs += [InputSpec(name, shape, "float32") for name, shape in declared.extra_inputs(spec)]

        def fn_all(*tensors: Any) -> dict[str, Any]:
            return {OUTPUT: to_uint8_images(net(list(tensors), training=False))}

        return Serving(loaded.name, fn_all, inputs, [net], {"network": net.name})
    if conditional:

        def fn(z: Any, label: Any) -> dict[str, Any]:
            return {OUTPUT: to_uint8_images(net([z, label], training=False))}
    else:

        def fn(z: Any) -> dict[str, Any]:
            return {OUTPUT: to_uint8_images(net(z, training=False))}

    return Serving(loaded.name, fn, inputs, [net], {"network": net.name})


def model_timesteps(loaded: LoadedModel) -> list[int] | None:
    """The DDIM grid a model was distilled for (``sampling.timesteps`` in its model.json), else None."""
    grid = (loaded.meta.get("sampling") or {}).get("timesteps")
    return [int(t) for t in grid] if grid else None


def _ddpm_serving(loaded: LoadedModel, steps: int, clip_x0: bool, guidance_scale: float) -> Serving:
    """The unrolled DDIM loop of a diffusion family: pixels (ddpm), or latents then the VAE decoder (ldm)."""
    import tensorflow as tf

    declared = family_spec(loaded.name)
    decode_latents = declared.decode_latents
    latent = decode_latents is not None
    cfg = declared.config(**loaded.family.spec[loaded.name])
    if cfg.captions:
        raise ConfigError(
            f"{loaded.path}: caption-conditioned models cannot be exported (the exported DDIM graph takes class "
            "labels only); sample them with `imagegen sample --prompt`"
        )
    schedule = schedule_from_config(cfg)
    grid = ddim_grid(schedule.timesteps, steps, model_timesteps(loaded))
    plan = ddim_plan(schedule, grid)
    networks = [loaded.family.networks[n] for n in declared.sampling_networks]  # the denoiser (and a decoder)
    unet = networks[0]
    num_classes = int(loaded.family.spec["num_classes"])
    image_shape = declared.noise_shape(loaded.family.spec)
    clip_x0 = clip_x0 and not latent  # a latent x0 is not in [-1, 1]

    def to_images(x: Any) -> Any:
        return x if decode_latents is None else decode_latents(loaded.family, x)

    def sample(x_T: Any, label: Any | None) -> dict[str, Any]:
        x = tf.cast(x_T, tf.float32)
        batch = tf.shape(x)[:1]
        null = None if label is None else tf.fill(batch, tf.constant(num_classes, tf.int32))
        for i, t in enumerate(grid):
            t_batch = tf.fill(batch, tf.constant(float(t), tf.float32))

            def eps_given(given: Any, x: Any = x, t_batch: Any = t_batch) -> Any:
                inputs = [x, t_batch] if given is None else [x, t_batch, given]
                return tf.cast(unet(inputs, training=False), tf.float32)

            guided = label is not None
            eps = classifier_free_guidance(eps_given, label, null, guidance_scale) if guided else eps_given(None)
            x = ddim_update(x, eps, plan.at(i), clip_x0)
        return {OUTPUT: to_uint8_images(to_images(x))}

    inputs = [InputSpec("x_T", image_shape, "float32")]
    if cfg.conditional:
        inputs.append(InputSpec("label", (), "int32"))

        def fn(x_T: Any, label: Any) -> dict[str, Any]:
            return sample(x_T, label)
    else:

        def fn(x_T: Any) -> dict[str, Any]:
            return sample(x_T, None)

    meta = {
        "ddpm_steps": len(grid),
        "timesteps": [int(t) for t in grid],
        "clip_x0": clip_x0,
        **({"guidance_scale": guidance_scale} if cfg.conditional else {}),
    }
    return Serving(loaded.name, fn, inputs, networks, meta)


def build_serving(
    loaded: LoadedModel, *, ddpm_steps: int = 4, clip_x0: bool = True, guidance_scale: float = 1.0
) -> Serving:
    """The serving function of ``loaded``; ``ddpm_steps``, ``clip_x0`` and ``guidance_scale`` matter for DDPM only
    (``guidance_scale`` only when it is conditional; the null label is ``num_classes``). A distilled DDPM student
    that records its own DDIM grid is exported on that grid, whatever ``ddpm_steps`` says."""
    require_tensorflow()
    if family_spec(loaded.name).diffusion:
        return _ddpm_serving(loaded, ddpm_steps, clip_x0, guidance_scale)
    return _decoder_serving(loaded)


def network_order(variables: Sequence[Any], networks: Sequence[keras.Model]) -> list[Any]:
    """``variables`` (TensorFlow variables a traced function reads) in the order of the networks' weights.

    A traced function lists the variables it reads in the iteration order of an identity set, i.e. by memory
    address, which changes from process to process; the SavedModel numbers its variables in that order
    (``_all_variables/<i>``), so the checkpoint, the object graph and ``saved_model.pb`` would too. The networks'
    weights are in layer-construction order, fixed by the code. A variable no network holds (none is expected)
    goes last, by name."""
    rank: dict[int, int] = {}
    for net in networks:
        for weight in net.weights:
            rank.setdefault(id(weight.value), len(rank))
    return sorted(variables, key=lambda v: (rank.get(id(v), len(rank)), v.name))


def content_uuid(fingerprint: Any) -> str:
    """A UUID for a SavedModel fingerprint derived from its hashes: 128 bits of the SHA-256 of the fingerprint
    without its ``uuid``, in decimal as TensorFlow writes the field.

    TensorFlow draws ``fingerprint.pb``'s ``uuid`` at random on every save, so two saves of the same model differ
    in that file alone; derived from the content, the same SavedModel gets the same UUID and a different one
    (any hash differs) another."""
    hashed = type(fingerprint)()
    hashed.CopyFrom(fingerprint)
    hashed.ClearField("uuid")
    digest = hashlib.sha256(hashed.SerializeToString(deterministic=True)).digest()
    return str(int.from_bytes(digest[:16], "big"))


def settle_fingerprint(saved_model_dir: Path) -> None:
    """Replace the random ``uuid`` of ``saved_model_dir/fingerprint.pb`` by :func:`content_uuid`; every hash
    TensorFlow computed from the written files is kept as it is (nothing else is rewritten). No fingerprint
    (TensorFlow's fingerprinting turned off): nothing to do."""
    from tensorflow.core.protobuf import fingerprint_pb2

    path = Path(saved_model_dir) / "fingerprint.pb"
    if not path.is_file():
        return
    fingerprint = fingerprint_pb2.FingerprintDef.FromString(path.read_bytes())
    fingerprint.uuid = content_uuid(fingerprint)
    write_bytes(path, fingerprint.SerializeToString(deterministic=True))


def export_savedmodel(serving: Serving, dest: Path) -> Path:
    """Write ``serving`` as a SavedModel at ``dest`` (must not exist yet) with the ``serving_default`` signature.

    Byte for byte reproducible: a fresh process exporting the same model with the same code writes the same files
    (variables in the networks' order, :func:`network_order`; fingerprint UUID from the content,
    :func:`settle_fingerprint`). Function names (``__inference_fn_<n>``) and capture names are numbered by a
    process-wide TensorFlow counter, so they match between processes that traced the same things before, as the
    ``export`` stage's own process does, not between an export and one run after other TensorFlow work."""
    require_tensorflow()
    dest = Path(dest)
    archive = keras.export.ExportArchive()
    for net in serving.networks:
        archive.track(net)
    endpoint = archive.add_endpoint(SIGNATURE, serving.fn, input_signature=serving.input_signature())
    traced = endpoint.get_concrete_function()  # the one trace the archive saves (the signature is fixed)
    traced.set_variables(network_order(traced.variables, serving.networks))
    # Without the traced gradients of tf.custom_gradient ops (TensorFlow's SiLU is one: 104 functions in the
    # 4-step student's graph): a sampler is never differentiated, and every load (each TFLite conversion loads
    # the SavedModel twice) deserializes them, so leaving them out shortens writing and every conversion.
    import tensorflow as tf

    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    archive.write_out(str(dest), verbose=False, options=options)
    settle_fingerprint(dest)
    return dest
