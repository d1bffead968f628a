# Sourced by the scripts beside it, ON THE GPU HOST, from the root of the copied checkout: installs the staged
# wheels (.whl/, from prepare.sh) into /tmp/site, sets the environment imagegen runs in there (JAX backend, src/
# on the path, no GPU memory preallocation) and FASHION_DDPM, the params of the Fashion-MNIST 32x32 DDPM both
# scripts train (data from .devdata/, tracking off).
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
    exit 1
fi
export PYTHONPATH=$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH} KERAS_BACKEND=jax PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
FASHION_DDPM=(-S tracking.enabled=false -S data.name=fashion_mnist -S data.image_size=32
              -S data.path=.devdata/fashion_mnist -S data.download=false -S ddpm.base_channels=64
              -S "ddpm.channel_mults=[1,2,2]" -S ddpm.num_res_blocks=2 -S "ddpm.attention_resolutions=[16]"
              -S ddpm.learning_rate=0.0002 -S ddpm.ema_decay=0.9995 -S ddpm.steps=200000 -S train.batch_size=128
              -S train.log_every=100 -S train.checkpoint_every=2000 -S sample.steps=100)
