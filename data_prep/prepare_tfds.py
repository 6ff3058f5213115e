"""Download and prepare a tensorflow-datasets dataset for jaxpfl (``tfds:<name>`` sources).

Needs internet, and TensorFlow for preparing (``pip install tensorflow-cpu tensorflow-datasets``):
the library itself only *reads* prepared folders, without TensorFlow, through
``tfds.data_source``, which requires the ``array_record`` file format (the default here).

    python data_prep/prepare_tfds.py --name emnist/byclass --data-dir ~/tensorflow_datasets
    python -c "from jaxpfl.data.sources import load_raw; \\
               print(load_raw('emnist', '~/tensorflow_datasets').x_train.shape)"

Copy the resulting ``--data-dir`` to machines without internet.
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--name",
        required=True,
        help="tfds name, optionally with a config: mnist, emnist/byclass, cifar10, ...",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="tfds data root (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    p.add_argument(
        "--file-format",
        default="array_record",
        help="array_record (readable without TensorFlow) or tfrecord",
    )
    args = p.parse_args(argv)

    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(args.data_dir) if args.data_dir else None
    builder = tfds.builder(args.name, data_dir=data_dir, file_format=args.file_format)
    if builder.is_prepared():
        print(f"{args.name} is already prepared at {builder.data_dir}")
        return
    builder.download_and_prepare()
    print(f"prepared {args.name} at {builder.data_dir}: {builder.info.splits}")


if __name__ == "__main__":
    main()
