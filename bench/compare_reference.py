"""imagegen's DDPM trainer against a PyTorch reference (diffusers' UNet2DModel) on CPU, side by side.

The same U-Net in both: imagegen's at base_channels=32, channel_mults=[1,2,2], num_res_blocks=1,
attention_resolutions=[16], groups=8 is diffusers' UNet2DModel with block_out_channels=(32, 64, 64),
layers_per_block=1, single-head attention at side 16 (and in the middle block), norm_num_groups=8
(1,112,801 parameters at 32x32; the parameter counts are printed and must agree). One train step in both:
x_t = q_sample(x_0, t, eps) with host-drawn t and eps, eps-MSE, global grad-norm clip 1.0, Adam (ours) /
AdamW (reference), then an EMA update of every weight.

Each trainer runs in its own long-lived worker process (ours once with KERAS_BACKEND=tensorflow, once with
KERAS_BACKEND=jax; the reference with torch), and the configs are measured interleaved, one worker at a time
(TF, reference, JAX per config), so a changing machine load hits all three alike; the 1-minute load average
is printed with every row. FLOPs per image: XLA's cost analysis of our jitted JAX train step (the same Keras
graph as the TF one) and torch.utils.flop_counter.FlopCounterMode over the reference's forward + backward.
XLA counts every operation (elementwise included), FlopCounterMode only matmuls and convolutions, so the
"matched" column compares FLOP rates (images/s x FLOPs/image).

    python bench/compare_reference.py                 # 16x16 and 32x32, batch 64 and 128
    python bench/compare_reference.py --quick         # smoke run: 16x16, batch 8, a couple of steps
    python bench/compare_reference.py --out compare.json -S train.jit_compile=false

Needs the benchmark extra: ``pip install -e ".[bench]"`` with a CPU build of torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from imagegen import startup

HERE = Path(__file__).resolve().parent
# imagegen's DDPM U-Net that has exactly diffusers' UNet2DModel(block_out_channels=(32, 64, 64), ...) weights.
OURS = [
    "ddpm.base_channels=32",
    "ddpm.channel_mults=[1,2,2]",
    "ddpm.num_res_blocks=1",
    "ddpm.attention_resolutions=[16]",
    "ddpm.groups=8",
    "ddpm.dropout=0.0",
]
WIDTHS = (32, 64, 64)
ATTENTION_SIDES = (16,)
GROUPS = 8
TIMESTEPS = 1000
LEARNING_RATE = 2e-3
EMA_DECAY = 0.995
WORKERS = {"tf": "tensorflow", "jax": "jax", "ref": "torch"}


# ----------------------------------------------------------------------------------------------- reference
def build_reference(size: int, channels: int = 1) -> Any:
    """diffusers' UNet2DModel with our U-Net's widths, blocks and attention sides (single-head attention)."""
    from diffusers import UNet2DModel

    sides = [size // 2**i for i in range(len(WIDTHS))]
    down = tuple("AttnDownBlock2D" if s in ATTENTION_SIDES else "DownBlock2D" for s in sides)
    up = tuple("AttnUpBlock2D" if s in ATTENTION_SIDES else "UpBlock2D" for s in reversed(sides))
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=WIDTHS,
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=GROUPS,
        attention_head_dim=None,  # one head of the block's width, as ours
        dropout=0.0,
    )


def reference_parameters(size: int, channels: int = 1) -> int:
    return sum(p.numel() for p in build_reference(size, channels).parameters())


def ours_parameters(size: int, channels: int = 1) -> int:
    from imagegen.config import load_params
    from imagegen.models.unet import build_unet

    return build_unet(load_params(None, OURS).ddpm, size, channels, 10).count_params()


def _reference_step(size: int, batch: int) -> tuple[Callable[[], dict], Callable[[int], float], int]:
    """(step, flops_per_image(count_batch), parameters) of the torch reference: the same step as ours."""
    import torch
    from diffusers import DDPMScheduler
    from torch.utils.flop_counter import FlopCounterMode

    from imagegen.data.loader import BatchStream
    from imagegen.data.processed import Split

    torch.manual_seed(0)
    model = build_reference(size).train()
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE)
    sched = DDPMScheduler(num_train_timesteps=TIMESTEPS, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(max(batch * 4, 512), size, size, 1), dtype=np.uint8)
    stream = BatchStream(Split(images, rng.integers(0, 10, len(images))), batch, seed=0)

    def loss_of(x0: Any) -> Any:
        eps = torch.randn_like(x0)
        t = torch.randint(0, TIMESTEPS, (x0.shape[0],))
        pred = model(sched.add_noise(x0, eps, t), t).sample
        return torch.nn.functional.mse_loss(pred, eps)

    def step() -> dict:
        x0 = torch.from_numpy(next(stream).images).permute(0, 3, 1, 2).contiguous()
        loss = loss_of(x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - EMA_DECAY)
        return {"loss": loss.item()}

    def flops_per_image(n: int) -> float:
        x0 = torch.from_numpy(next(stream).images[:n]).permute(0, 3, 1, 2).contiguous()
        with FlopCounterMode(display=False) as counter:
            loss_of(x0).backward()
        opt.zero_grad(set_to_none=True)
        return counter.get_total_flops() / n

    return step, flops_per_image, sum(p.numel() for p in params)


# ----------------------------------------------------------------------------------------------- workers
def _timed(step: Callable[[], Mapping[str, Any]], batch: int, seconds: float, min_steps: int, max_steps: int) -> dict:
    """Warm up (compile) with one step, calibrate with one, then time enough steps to fill ``seconds``."""
    from train_throughput import time_steps

    warmup_s = time_steps(step, 1)
    one = time_steps(step, 1)
    n = int(max(min_steps, min(max_steps, round(seconds / max(one, 1e-6)))))
    elapsed = time_steps(step, n)
    return {
        "images_per_sec": batch * n / elapsed,
        "ms_per_step": 1000 * elapsed / n,
        "steps": n,
        "warmup_s": warmup_s,
        "load_1min": os.getloadavg()[0],
    }


def _measure(kind: str, cfg: dict) -> dict:
    size, batch = cfg["image_size"], cfg["batch_size"]
    timing = (cfg["seconds"], cfg["min_steps"], cfg["max_steps"])
    if kind == "ref":
        import torch

        step, flops_fn, n_params = _reference_step(size, batch)
        flops = flops_fn(min(batch, 8))
        return {
            **_timed(step, batch, *timing),
            "parameters": n_params,
            "flops_per_image": flops,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
    import keras
    from train_throughput import prepare

    from imagegen.training.precision import resolve_jit

    keras.backend.clear_session()
    p = prepare("ddpm", batch, size, 1, OURS + cfg["overrides"])
    out = {**_timed(p.step, batch, *timing), "parameters": p.family.trainable_count()}
    out["jit_compile"] = resolve_jit(p.params.train.jit_compile)
    if kind == "jax":
        out["flops_per_image"] = _xla_flops(p.stepper, p.next_batch()) / batch
    return out


def _xla_flops(stepper: Any, batch: Mapping[str, Any]) -> float:
    """FLOPs of one jitted JAX train step by XLA's cost analysis (of the lowered program: no second compile)."""
    import jax

    fn = stepper._step_fn if hasattr(stepper._step_fn, "lower") else jax.jit(stepper._step_fn)
    cost = fn.lower(stepper.state, dict(batch)).cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost["flops"])


def worker(kind: str) -> None:
    """Answer one JSON line on stdout per JSON config line on stdin (imports once, measures many)."""
    sys.path.insert(0, str(HERE))
    if kind != "ref":
        import keras  # noqa: F401  (the import is the slow part: do it before the first config arrives)
    else:
        import diffusers  # noqa: F401
    print(json.dumps({"ready": kind}), flush=True)
    for line in sys.stdin:
        cfg = json.loads(line)
        try:
            print(json.dumps(_measure(kind, cfg)), flush=True)
        except Exception as exc:  # reported to the parent, which stops with the message
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)


class Worker:
    def __init__(self, kind: str, log_dir: Path) -> None:
        env = {**os.environ, "KERAS_BACKEND": WORKERS[kind] if kind != "ref" else "tensorflow"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        startup.set_tensorflow_defaults(env)  # ours on the kernels the `imagegen` command trains on
        self.kind = kind
        self.log = log_dir / f"{kind}.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
            env=env,
        )

    def read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text()[-3000:]
            raise SystemExit(f"compare_reference: the {self.kind} worker died; its log ends:\n{tail}")
        msg = json.loads(line)
        if "error" in msg:
            raise SystemExit(f"compare_reference: the {self.kind} worker failed: {msg['error']}")
        return msg

    def ask(self, cfg: dict) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cfg) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


# ----------------------------------------------------------------------------------------------- table
def _row(size: int, batch: int, res: dict[str, dict]) -> dict:
    tf, jx, ref = res.get("tf", {}), res.get("jax", {}), res["ref"]
    ours_flops = jx.get("flops_per_image")
    row: dict[str, Any] = {
        "config": f"{size}x{size}x1 b{batch}",
        "image_size": size,
        "batch_size": batch,
        "parameters_ours": (tf or jx).get("parameters"),
        "parameters_reference": ref["parameters"],
        "images_per_sec_tf": tf.get("images_per_sec"),
        "images_per_sec_jax": jx.get("images_per_sec"),
        "images_per_sec_reference": ref["images_per_sec"],
        "gflops_per_image_ours": ours_flops and ours_flops / 1e9,
        "gflops_per_image_reference": ref["flops_per_image"] / 1e9,
        "load_1min": [r["load_1min"] for r in res.values()],
        "raw": res,
    }
    for k in ("tf", "jax"):
        ips = row[f"images_per_sec_{k}"]
        row[f"ratio_{k}"] = ips and ips / ref["images_per_sec"]
        row[f"ratio_{k}_matched_flops"] = (
            ips and ours_flops and (ips * ours_flops) / (ref["images_per_sec"] * ref["flops_per_image"])
        )
    return row


def _fmt(v: Any, spec: str) -> str:
    """``format(v, spec)``, or a dash of the same width when there is no value (a backend not run)."""
    return format("-", spec.split(".")[0]) if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'config':<14}{'params ours/ref':>20}{'img/s TF':>10}{'img/s JAX':>10}{'img/s ref':>10}"
        f"{'GFLOP/img ours':>15}{'GFLOP/img ref':>14}{'TF/ref':>8}{'JAX/ref':>8}{'TF/ref@FLOPs':>13}  load(1m)"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['config']:<14}{r['parameters_ours']:>10,}/{r['parameters_reference']:<9,}"
            f"{_fmt(r['images_per_sec_tf'], '>10.1f')}{_fmt(r['images_per_sec_jax'], '>10.1f')}"
            f"{r['images_per_sec_reference']:>10.1f}{_fmt(r['gflops_per_image_ours'], '>15.3f')}"
            f"{r['gflops_per_image_reference']:>14.3f}{_fmt(r['ratio_tf'], '>8.2f')}{_fmt(r['ratio_jax'], '>8.2f')}"
            f"{_fmt(r['ratio_tf_matched_flops'], '>13.2f')}  " + " ".join(f"{x:.1f}" for x in r["load_1min"])
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 16x16, batch 8, a couple of steps")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="image sides (default 16 32)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 64 128")
    ap.add_argument("--backends", nargs="+", default=["tf", "jax"], choices=["tf", "jax"], help="ours on these")
    ap.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (default 4)")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="param override (ours)")
    ap.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    sizes = args.sizes or ([16] if args.quick else [16, 32])
    batches = args.batch_sizes or ([8] if args.quick else [64, 128])
    cfg_timing = {
        "seconds": args.seconds if args.seconds is not None else (0.0 if args.quick else 4.0),
        "min_steps": 1 if args.quick else 3,
        "max_steps": 2 if args.quick else 50,
        "overrides": args.overrides,
    }
    t0 = time.perf_counter()
    print(f"load average at start (1, 5, 15 min): {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="compare_reference_") as logs:
        workers = {k: Worker(k, Path(logs)) for k in [*args.backends, "ref"]}
        try:
            for w in workers.values():
                w.read()  # ready
            order = [k for k in ("tf", "ref", "jax") if k in workers]
            rows = []
            for size in sizes:
                for batch in batches:
                    cfg = {"image_size": size, "batch_size": batch, **cfg_timing}
                    res = {k: workers[k].ask(cfg) for k in order}
                    rows.append(_row(size, batch, res))
                    print(f"measured {rows[-1]['config']} (load {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            for w in workers.values():
                w.close()
    print()
    print_table(rows)
    mismatch = [r["config"] for r in rows if r["parameters_ours"] != r["parameters_reference"]]
    print(
        f"\nparameters equal: {not mismatch}{'' if not mismatch else ' (differ at ' + ', '.join(mismatch) + ')'}"
        f"; load average at end: {os.getloadavg()}; wall {time.perf_counter() - t0:.0f} s"
    )
    print(
        "ratio = ours / reference images/s; @FLOPs = FLOP rate (images/s x FLOPs/image; XLA counts elementwise "
        "ops too, FlopCounterMode only matmul/conv). Figures on a loaded machine are only comparable within a row."
    )
    if args.out:
        from imagegen.fileio import write_json

        write_json(args.out, {"rows": rows, "load_end": os.getloadavg(), "argv": sys.argv[1:]})
    if mismatch:
        raise SystemExit(2)


if __name__ == "__main__":
    main()
