"""Profile of one client's training step on one CPU core: per-op times, variants interleaved.

Each variant is a child process pinned to one core (one XLA CPU device, ``JAXPFL_CPU_DEVICES=1``)
that compiles the engine's shape of local training, a ``lax.scan`` of ``--steps`` SGD steps
(batch ``--batch-size``, FedAvgCNN by default, ``train=True``), on fixed random uint8 batches.
A variant is a convolution formulation (``JAXPFL_CONV``) plus XLA flags, which XLA reads once
per process; ``torch`` (with ``--torch-python``) is the same step in PyTorch, one thread.

- Timing: the variants run their block in turn (A, B, C, A, B, C, ...), ``--repeats`` times;
  per variant the median and min ms per step and the spread ((max − min) / median). The JAX
  programs are compiled once, with the profiler's hooks in them (below), so their times carry
  that small cost and PyTorch's do not.
- Agreement: every JAX variant trains from the same initial weights on the same batches; the
  largest parameter difference to the first variant after one block is reported.
- Profile: one more block per variant under ``jax.profiler`` with
  ``--xla_cpu_enable_xprof_traceme``: the time of every compiled op (fusion, dot, copy, ...),
  named as in the optimised HLO and grouped by the model layer and direction its metadata
  names (``conv2 backward``: the ops XLA emitted for conv2's VJP). ``torch``: its profiler's
  self CPU time per aten op.

    python experiments/profile_step.py                                  # im2col vs xla
    python experiments/profile_step.py --variants im2col,im2col+ynn_dot --out prof.json
    python experiments/profile_step.py --torch-python /path/to/python-with-torch
    python experiments/profile_step.py --variants im2col,im2col@/path/to/old/checkout

Prints tables; writes JSON (``--out``). A profile names the ops of one compiled program on one
machine: the op names are XLA's and change with its version.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from typing import Any

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: name -> (JAXPFL_CONV, extra XLA flags). ``A+B`` combines: conv from the first, flags of all.
VARIANTS: dict[str, tuple[str | None, str]] = {
    "im2col": ("im2col", ""),
    "xla": ("xla", ""),
    "ynn_dot": (None, "--xla_cpu_experimental_ynn_fusion_type=dot"),
    "onednn": (None, "--xla_cpu_use_onednn=true"),
    "xnn_graph": (None, "--xla_cpu_experimental_xnn_graph_fusion_mode="
                        "XNN_GRAPH_FUSION_MODE_GREEDY"),
}


def variant_env(name: str) -> dict[str, str]:
    conv, flags = None, []
    for part in name.split("@", 1)[0].split("+"):
        if part not in VARIANTS:
            raise SystemExit(f"error: unknown variant {part!r}; choose from "
                             f"{', '.join(VARIANTS)} or torch, joined with '+'")
        c, f = VARIANTS[part]
        conv = conv or c
        flags += [f] if f else []
    env = dict(os.environ, JAXPFL_CPU_DEVICES="1", JAXPFL_CONV=conv or "im2col",
               XLA_FLAGS=" ".join([os.environ.get("XLA_FLAGS", ""), *flags,
                                   "--xla_cpu_enable_xprof_traceme=true"]).strip())
    return env


def op_group(op_name: str, hlo_op: str, layers: frozenset[str]) -> str:
    """'conv2 backward', 'fc1 forward', 'reduce_max forward', ... from an op's HLO metadata.

    A fusion carries the metadata of one of its ops, so work that XLA fused across layers is
    counted where that op belongs."""
    if not op_name:
        return "other (" + re.sub(r"[.\d]+$", "", hlo_op) + ")"
    direction = "backward" if "transpose(" in op_name else "forward"
    parts = op_name.rstrip("/").split("/")
    layer = next((c for c in parts if c in layers), None)
    if layer:
        return f"{layer} {direction}"
    if not any("jvp(" in c for c in parts):
        return "update"
    return f"{parts[-1]} {direction}"


# ----------------------------------------------------------------------------------------------
# Children


def jax_child(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.root or _ROOT)
    import glob
    import shutil
    import time

    import jax
    import jax.numpy as jnp
    import optax
    from jax import lax

    from jaxpfl.models import get_model

    model = get_model(args.model)
    layers = frozenset(path[-2] for path in model.param_order if len(path) >= 2)
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.integers(0, 256, (args.steps, args.batch_size, *model.input_shape),
                                  dtype=np.uint8))
    ys = jnp.asarray(rng.integers(0, model.num_classes, (args.steps, args.batch_size)), jnp.int32)

    def loss(p: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        logits = model.apply(p, x, train=True, key=jax.random.key(1))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def block(p: Any, xs: jax.Array, ys: jax.Array) -> Any:
        def step(p: Any, b: Any) -> Any:
            value, g = jax.value_and_grad(loss)(p, *b)
            return jax.tree.map(lambda a, d: a - args.lr * d, p, g), value
        return lax.scan(step, p, (xs, ys))

    p0 = model.init(jax.random.key(0), xs[0])
    t0 = time.perf_counter()
    compiled = block.lower(p0, xs, ys).compile()
    compile_s = time.perf_counter() - t0
    meta = {}
    for line in compiled.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) .*?op_name=\"([^\"]+)\"", line)
        if m:
            meta[m.group(1)] = (m.group(2), m.group(3))
    jax.block_until_ready(compiled(p0, xs, ys))
    print(json.dumps({"ready": True, "compile_s": compile_s}), flush=True)
    for cmd in sys.stdin:
        cmd = cmd.strip()
        if cmd == "time":
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(p0, xs, ys))
            print(json.dumps({"ms": (time.perf_counter() - t0) / args.steps * 1e3}), flush=True)
        elif cmd.startswith("params "):
            p, losses = compiled(p0, xs, ys)
            np.savez(cmd.split(" ", 1)[1], *[np.asarray(v) for v in jax.tree.leaves(p)],
                     losses=np.asarray(losses))
            print(json.dumps({"saved": True}), flush=True)
        elif cmd.startswith("profile "):
            out = cmd.split(" ", 1)[1]
            shutil.rmtree(out, ignore_errors=True)
            jax.profiler.start_trace(out)
            jax.block_until_ready(compiled(p0, xs, ys))
            jax.profiler.stop_trace()
            data = jax.profiler.ProfileData.from_file(
                sorted(glob.glob(os.path.join(out, "**", "*.xplane.pb"), recursive=True))[-1])
            per_op: dict[str, float] = defaultdict(float)
            for plane in data.planes:
                for line in plane.lines:
                    if "XLAEigen" not in line.name:
                        continue
                    for ev in line.events:
                        if not ev.name.startswith(("ThunkExecutor", "end:")):
                            per_op[ev.name] += ev.duration_ns / 1e6 / args.steps
            ops = [{"op": k, "ms": v, "shape": meta.get(k, ("", ""))[0],
                    "group": op_group(meta.get(k, ("", ""))[1], k, layers),
                    "op_name": meta.get(k, ("", ""))[1]} for k, v in per_op.items()]
            print(json.dumps({"ops": sorted(ops, key=lambda o: -o["ms"])}), flush=True)
        elif cmd == "quit":
            return


def torch_child(args: argparse.Namespace) -> None:
    import time

    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 10))
    rng = np.random.default_rng(0)
    xs = torch.from_numpy(rng.integers(0, 256, (args.steps, args.batch_size, 1, 28, 28))
                          .astype(np.float32) / 255.0)
    ys = torch.from_numpy(rng.integers(0, 10, (args.steps, args.batch_size)))
    opt = torch.optim.SGD(net.parameters(), lr=args.lr)
    lossf = nn.CrossEntropyLoss()

    def block() -> None:
        for x, y in zip(xs, ys):
            opt.zero_grad()
            lossf(net(x), y).backward()
            opt.step()

    block()
    print(json.dumps({"ready": True, "compile_s": 0.0}), flush=True)
    for cmd in sys.stdin:
        cmd = cmd.strip()
        if cmd == "time":
            t0 = time.perf_counter()
            block()
            print(json.dumps({"ms": (time.perf_counter() - t0) / args.steps * 1e3}), flush=True)
        elif cmd.startswith("profile "):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                block()
            ops = [{"op": e.key, "ms": e.self_cpu_time_total / 1e3 / args.steps, "shape": "",
                    "group": "torch", "op_name": ""} for e in prof.key_averages()
                   if e.self_cpu_time_total > 0]
            print(json.dumps({"ops": sorted(ops, key=lambda o: -o["ms"])}), flush=True)
        elif cmd == "quit":
            return


# ----------------------------------------------------------------------------------------------
# Parent


class Child:
    def __init__(self, name: str, args: argparse.Namespace, core: int | None) -> None:
        self.name = name
        common = ["--child", name, "--model", args.model, "--batch-size", str(args.batch_size),
                  "--steps", str(args.steps), "--lr", str(args.lr)]
        if "@" in name:
            common += ["--root", os.path.abspath(name.split("@", 1)[1])]
        if name == "torch":
            cmd, env = [args.torch_python, os.path.abspath(__file__), *common], dict(os.environ)
        else:
            cmd, env = [sys.executable, os.path.abspath(__file__), *common], variant_env(name)
        if core is not None:
            cmd += ["--core", str(core)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.ready = self.read()
        self.ms: list[float] = []

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise SystemExit(f"error: variant {self.name!r} died (exit {self.proc.wait()}); "
                             "run it alone to see why")
        return json.loads(line)

    def ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        try:
            self.ask("quit")
        except (SystemExit, BrokenPipeError, json.JSONDecodeError):
            pass
        self.proc.wait()


def grouped(ops: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for o in ops:
        out[o["group"]] += o["ms"]
    return {g: ms for g, ms in sorted(out.items(), key=lambda kv: -kv[1]) if ms >= 5e-4}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="im2col,xla",
                    help=f"comma-separated: {', '.join(VARIANTS)}, torch; '+' combines; "
                    "'NAME@DIR' runs NAME on the jaxpfl checkout in DIR (a before/after row)")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--steps", type=int, default=64, help="SGD steps per timed block")
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--top", type=int, default=15, help="ops listed per variant")
    ap.add_argument("--core", type=int, default=None,
                    help="pin every child to this core (default: the first one allowed)")
    ap.add_argument("--torch-python", default=None,
                    help="a Python with torch, for the 'torch' variant (default: this one)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.child:
        if args.core is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {args.core})  # before XLA or torch start their threads
        (torch_child if args.child == "torch" else jax_child)(args)
        return {}
    if args.repeats < 1 or args.steps < 1 or args.batch_size < 1:
        raise SystemExit("error: --repeats, --steps and --batch-size must be at least 1")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    for name in names:
        if name != "torch":
            variant_env(name)
        if "@" in name and not os.path.isdir(os.path.join(name.split("@", 1)[1], "jaxpfl")):
            raise SystemExit(f"error: {name!r}: no jaxpfl package under {name.split('@', 1)[1]}")
    args.torch_python = args.torch_python or sys.executable
    core = args.core if args.core is not None else (
        min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None)
    children = [Child(n, args, core) for n in names]
    try:
        for _ in range(args.repeats):
            for c in children:
                c.ms.append(c.ask("time")["ms"])
        result: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items()
                                               if k != "child"}, "core": core, "rows": {}}
        with tempfile.TemporaryDirectory() as tmp:
            ref = None
            for i, c in enumerate(children):
                row: dict[str, Any] = {
                    "compile_s": c.ready["compile_s"], "ms_median": float(np.median(c.ms)),
                    "ms_min": float(min(c.ms)),
                    "spread": float((max(c.ms) - min(c.ms)) / np.median(c.ms)), "ms": c.ms}
                if c.name != "torch":
                    path = os.path.join(tmp, f"params{i}.npz")
                    c.ask("params " + path)
                    with np.load(path) as z:
                        leaves = [z[f"arr_{i}"] for i in range(len(z.files) - 1)]
                        row["final_loss"] = float(z["losses"][-1])
                    ref = ref or leaves
                    row["max_param_diff_to_first"] = max(
                        float(np.abs(a - b).max()) for a, b in zip(leaves, ref))
                prof = c.ask("profile " + os.path.join(tmp, f"trace{i}"))["ops"]
                row["profiled_ms"] = sum(o["ms"] for o in prof)
                row["groups"] = grouped(prof)
                row["ops"] = prof
                result["rows"][c.name] = row
    finally:
        for c in children:
            c.close()
    first = result["rows"][names[0]]
    print(f"{args.model}, batch {args.batch_size}, {args.steps} steps per block, "
          f"{args.repeats} interleaved repeats, one core ({core})")
    print(f"{'variant':24s} {'ms/step med':>11s} {'min':>7s} {'spread':>7s} "
          f"{'vs first':>8s} {'compile s':>9s} {'Δparam':>8s}")
    for name in names:
        r = result["rows"][name]
        print(f"{name:24s} {r['ms_median']:11.2f} {r['ms_min']:7.2f} {r['spread']:7.1%} "
              f"{first['ms_median'] / r['ms_median']:7.2f}x {r['compile_s']:9.1f} "
              f"{r.get('max_param_diff_to_first', float('nan')):8.1e}")
    for name in names:
        r = result["rows"][name]
        print(f"\n{name}: profiled {r['profiled_ms']:.2f} ms per step, by layer and direction")
        for g, ms in r["groups"].items():
            print(f"  {ms:7.3f} ms {ms / r['profiled_ms']:6.1%}  {g}")
        print(f"  top {args.top} ops")
        for o in r["ops"][: args.top]:
            print(f"  {o['ms']:7.3f} ms {o['ms'] / r['profiled_ms']:6.1%}  {o['op'][:34]:34s} "
                  f"{o['shape'][:34]:34s} {o['group']}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
