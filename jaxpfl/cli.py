"""Command lines generated from config dataclasses; presets as data; one-line errors.

One definition per setting. Every flag of ``experiments/*.py`` is a field of a config dataclass
(``FedAvgConfig``, ``PersonalizedFedAvgConfig``, ``RunConfig``, :class:`DataConfig`,
:class:`Sampling`, :class:`StrategyArgs`, or an experiment's own small dataclass):

* the flag is ``--`` + the field name with ``-`` for ``_`` (scripts may add aliases);
* the type hint gives its type: ``int``, ``float``, ``str``; ``bool`` becomes ``--x/--no-x``;
  ``X | None`` also accepts ``none``; ``tuple[X, ...]`` takes one or more values;
* the field default is the default; the help is ``field(metadata={"help": ...})`` or the
  field's entry in the class docstring's ``Attributes:`` block;
* ``metadata`` may also give ``choices``, ``exclusive`` (a group name: the fields of a group
  are spellings of one setting, give at most one) and ``affects_results=False`` (left out of
  :func:`config_text`, the text a resumed run must match).

Values are layered: field default < the script's defaults < ``--preset`` < ``--smoke`` <
flags given on the command line. Validation is each dataclass's own ``__post_init__`` raising
:class:`~jaxpfl.errors.ConfigError`; field names in its message are shown as the flags.

Errors: :func:`main_guard` prints the project's own errors (:class:`~jaxpfl.errors.JaxpflError`)
and device out-of-memory as one line ``error: ...`` and exits with status 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import math
import os
import re
import sys
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax

from jaxpfl.core.engine import CLIENT_STATES, POOL_LAYOUTS, STRATEGIES, Strategy
from jaxpfl.core.train import ExecOptions
from jaxpfl.data.dataset import DataError
from jaxpfl.data.federate import PARTITIONS, POOLS, check_arguments, federate
from jaxpfl.errors import ConfigError, JaxpflError

__all__ = [
    "DEFAULT_NUM_CLIENTS",
    "NO_EFFECT",
    "PFLLIB_FMNIST",
    "RESULT_FIELDS",
    "AtLeast",
    "Baseline",
    "CliParser",
    "CpuScale",
    "DataConfig",
    "ExperimentCli",
    "FieldSpec",
    "Headline",
    "Parsed",
    "Preset",
    "REFERENCE_KINDS",
    "Reference",
    "Sampling",
    "StrategyArgs",
    "add_config_args",
    "build_config",
    "config_from_args",
    "config_text",
    "field_specs",
    "format_value",
    "load_dataset",
    "main_guard",
    "one_line",
    "prepare_dir",
    "results_fields",
    "section_prefix",
    "strategy_from_args",
]

#: ``field(metadata=NO_EFFECT)``: the field never changes what a run computes (paths, progress
#: bars, how clients are mapped), so :func:`config_text` leaves it out.
NO_EFFECT: Mapping[str, Any] = types.MappingProxyType({"affects_results": False})

#: For config classes defined outside the experiments whose fields carry no ``affects_results``
#: metadata: the fields that change results. ``RunConfig`` documents that it is "how a run is
#: driven (never what an algorithm computes)"; its seed is the root of every key and
#: ``eval_every`` decides what is recorded. Every other class: all fields, unless marked.
RESULT_FIELDS: dict[type, tuple[str, ...]] = {}


# ----------------------------------------------------------------------------------- errors


class CliParser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``, exit status 2) and no abbreviations
    (``--rep 3`` is an error, not a guess at ``--reptile-rounds``)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        # "argument --clients/--clients-per-round.clients: ..." names the flag once
        message = re.sub(r"argument (-[\w.-]+)(?:/-[\w.-]+)+:", r"argument \1:", message)
        print(f"error: {' '.join(message.split())} (see --help)", file=sys.stderr)
        sys.exit(2)


_OOM_HINT = (
    "device out of memory (RESOURCE_EXHAUSTED); lower --chunk-size (with --strategy chunked), "
    "lower the clients per round (--clients / --participation), or use --strategy sequential"
)


def _is_oom(e: BaseException) -> bool:
    """A device allocation failure: XLA's runtime error whose text has RESOURCE_EXHAUSTED."""
    import jax

    kinds: tuple[type, ...] = tuple(
        t for t in (getattr(jax.errors, "JaxRuntimeError", None),) if isinstance(t, type)
    )
    try:
        from jaxlib.xla_extension import XlaRuntimeError  # older jaxlib

        kinds += (XlaRuntimeError,)
    except ImportError:
        pass
    return isinstance(e, kinds or (RuntimeError,)) and "RESOURCE_EXHAUSTED" in str(e)


def one_line(e: BaseException) -> str:
    """The exception's message on one line (its type name when it has none)."""
    return " ".join(str(e).split()) or type(e).__name__


def main_guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn``; the project's own errors and device OOM print one line ``error: ...`` on
    stderr and exit with status 2. Every other exception is an internal bug: it propagates
    with its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except JaxpflError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as e:
            if not _is_oom(e):
                raise
            detail = one_line(e).split("RESOURCE_EXHAUSTED", 1)[1].lstrip(": ")[:160]
            print(f"error: {_OOM_HINT}" + (f" [{detail}]" if detail else ""), file=sys.stderr)
            sys.exit(2)

    return wrapper


# --------------------------------------------------------------------- dataclass -> flags


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One config field as a command-line flag."""

    cls: type
    name: str
    flag: str
    aliases: tuple[str, ...]
    kind: type
    optional: bool
    many: bool
    choices: tuple[Any, ...] | None
    default: Any
    help: str
    exclusive: str | None
    affects_results: bool


def _attribute_docs(cls: Any, block: str = "Attributes") -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` block (or another ``block``) of ``cls``'s
    own docstring."""
    own = cls.__dict__.get("__doc__") if isinstance(cls, type) else cls.__doc__
    doc = inspect.cleandoc(own or "")
    out: dict[str, str] = {}
    inside, name, indent = False, None, None
    for line in doc.splitlines():
        if not inside:
            inside = re.match(rf"{block}\b.*:$", line.strip()) is not None
            continue
        if not line.strip():
            name = None
            continue
        ind = len(line) - len(line.lstrip())
        if ind == 0:
            break
        m = re.match(r"(\w+)(?:\s*\([^)]*\))?:\s?(.*)$", line.strip())
        if m and (indent is None or ind <= indent):
            indent, name = ind, m.group(1)
            out[name] = m.group(2).strip()
        elif name is not None:
            out[name] = f"{out[name]} {line.strip()}".strip()
    return out


def _resolve_type(cls: type, name: str, hint: Any) -> tuple[type, bool, bool, tuple | None]:
    """(kind, optional, many, choices) of a field's type hint."""
    optional = many = False
    choices = None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise TypeError(f"{cls.__name__}.{name}: unsupported type {hint!r} for a flag")
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{cls.__name__}.{name}: only tuple[X, ...] is supported")
        many, hint = True, args[0]
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        hint = type(choices[0])
    if hint not in (int, float, str, bool):
        raise TypeError(f"{cls.__name__}.{name}: unsupported type {hint!r} for a flag")
    return hint, optional, many, choices


def field_specs(
    cls: type,
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
    exclude: Iterable[str] = (),
) -> list[FieldSpec]:
    """The flags of dataclass ``cls``: one per init field not in ``exclude``."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    docs = _attribute_docs(cls)
    skip = set(exclude)
    specs = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"{cls.__name__}.{f.name} needs a default to become a flag")
        kind, optional, many, choices = _resolve_type(cls, f.name, hints[f.name])
        choices = tuple(f.metadata.get("choices", choices) or ()) or None
        specs.append(
            FieldSpec(
                cls=cls,
                name=f.name,
                flag="--" + f.name.replace("_", "-"),
                aliases=tuple((aliases or {}).get(f.name, ())),
                kind=kind,
                optional=optional,
                many=many,
                choices=choices,
                default=tuple(default) if many and default is not None else default,
                help=str(f.metadata.get("help") or docs.get(f.name) or f.name.replace("_", " ")),
                exclusive=f.metadata.get("exclusive"),
                affects_results=_affects_results(cls, f),
            )
        )
    return specs


def format_value(v: Any) -> str:
    """A value as it is written on the command line."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, tuple | list):
        return " ".join(format_value(a) for a in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _as_flag(spec: FieldSpec, v: Any) -> str:
    if spec.kind is bool and not spec.many and v is not None:
        return spec.flag if v else "--no-" + spec.flag[2:]
    return f"{spec.flag} {format_value(v)}"


_WHAT = {int: "an integer", float: "a number", str: "a string", bool: "on/off"}


def _short(text: str) -> str:
    return re.split(r"[;(]", text, maxsplit=1)[0].strip()


def _converter(spec: FieldSpec) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if spec.optional and text.lower() == "none":
            return None
        try:
            value = spec.kind(text) if spec.kind is not str else text
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {_WHAT[spec.kind]}{' or none' if spec.optional else ''}, got "
                f"{text!r} ({spec.flag}: {_short(spec.help)})"
            ) from None
        if spec.choices is not None and value not in spec.choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(map(str, spec.choices))})"
            )
        return value

    convert.__name__ = spec.kind.__name__
    return convert


def _coerce(spec: FieldSpec, v: Any, where: str) -> Any:
    """Check (and normalise) a value from a preset or a namespace against the field's type."""

    def one(a: Any) -> Any:
        if a is None and spec.optional:
            return None
        if spec.kind is bool:
            ok = isinstance(a, bool)
        else:
            kinds = (int, float) if spec.kind is float else (spec.kind,)
            ok = isinstance(a, kinds) and not isinstance(a, bool)
        if not ok:
            raise ConfigError(f"{where}: {spec.flag} must be {_WHAT[spec.kind]}, got {a!r}")
        if spec.choices is not None and a not in spec.choices:
            raise ConfigError(f"{where}: {spec.flag} must be one of {spec.choices}, got {a!r}")
        return float(a) if spec.kind is float else a

    if spec.many:
        if v is None and spec.optional:
            return None
        if not isinstance(v, tuple | list):
            raise ConfigError(f"{where}: {spec.flag} takes a list of values, got {v!r}")
        return tuple(one(a) for a in v)
    return one(v)


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def add_config_args(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    group: str | Any | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    suppress: bool = False,
    specs: Sequence[FieldSpec] | None = None,
) -> list[FieldSpec]:
    """Add one flag per field of dataclass ``cls`` to ``parser`` (in argument group ``group``:
    a title or an existing group). ``defaults`` override the shown (and, unless ``suppress``,
    parsed) defaults; with ``suppress`` only flags given on the command line appear in the
    namespace. ``specs``: the fields' specs when already made (their flags and aliases as
    they are). Returns the specs (dest = field name)."""
    target = parser.add_argument_group(group) if isinstance(group, str) else group or parser
    specs = list(field_specs(cls, aliases=aliases, exclude=exclude) if specs is None else specs)
    for s in specs:
        default = (defaults or {}).get(s.name, s.default)
        kw: dict[str, Any] = dict(
            dest=s.name,
            help=_escape(f"{s.help} [default: {format_value(default)}]"),
            default=argparse.SUPPRESS if suppress else default,
        )
        if s.kind is bool and not s.many:
            target.add_argument(s.flag, *s.aliases, action=argparse.BooleanOptionalAction, **kw)
        else:
            metavar = (
                "{" + ",".join(map(str, s.choices)) + "}"
                if s.choices
                else {int: "N", float: "X", str: "TEXT"}[s.kind]
            )
            target.add_argument(
                s.flag,
                *s.aliases,
                type=_converter(s),
                nargs="+" if s.many else None,
                metavar=metavar,
                **kw,
            )
    return specs


def _flagify(message: str, specs: Sequence[FieldSpec], spelled: Mapping[str, str]) -> str:
    """Show field names in a config error as the flags the user types: every name with an
    underscore, and a field name that starts the message; canonical flags become the alias
    the user spelled."""
    flags = {s.name: spelled.get(s.name, s.flag) for s in specs}

    def sub(m: re.Match) -> str:
        return flags[m.group(0)]

    names = sorted((n for n in flags if "_" in n), key=len, reverse=True)
    if names:
        message = re.sub(r"(?<![\w-])(" + "|".join(names) + r")(?![\w-])", sub, message)
    m = re.match(r"(\w+)(?![\w-])", message)
    if m and m.group(1) in flags:
        message = flags[m.group(1)] + message[m.end() :]
    for s in specs:  # a field's bare flag in a message: the spelling the user typed, else
        bare = "--" + s.name.replace("_", "-")  # its own flag (namespaced where ambiguous)
        shown = spelled.get(s.name, s.flag)
        if shown != bare:
            message = re.sub(rf"(?<![\w.-]){re.escape(bare)}(?![\w-])", shown, message)
    return message


def build_config(
    cls: type,
    values: Mapping[str, Any],
    specs: Sequence[FieldSpec] | None = None,
    spelled: Mapping[str, str] | None = None,
) -> Any:
    """``cls(**values)``; its ``ConfigError`` is re-raised with field names shown as flags."""
    specs = field_specs(cls) if specs is None else specs
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(_flagify(one_line(e), specs, spelled or {})) from None


def config_from_args(cls: type, args: argparse.Namespace | Mapping[str, Any]) -> Any:
    """Build dataclass ``cls`` from a namespace filled by :func:`add_config_args` (fields absent
    from it keep their defaults); validation errors name the flags."""
    got = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    specs = field_specs(cls)
    values = {s.name: _coerce(s, got[s.name], "flag") for s in specs if s.name in got}
    return build_config(cls, values, specs)


# ----------------------------------------------------------------------- config text


def _affects_results(cls: type, f: dataclasses.Field) -> bool:
    """A field's ``affects_results`` metadata, else :data:`RESULT_FIELDS` of its class, else
    True: a field changes results unless it says (or its class documents) otherwise."""
    affects = f.metadata.get("affects_results")
    if affects is None:
        keep = RESULT_FIELDS.get(cls)
        affects = keep is None or f.name in keep
    return bool(affects)


def results_fields(cfg: Any) -> dict[str, Any]:
    """The fields of config ``cfg`` that change what a run computes (see :data:`NO_EFFECT`)."""
    fields = dataclasses.fields(cfg)
    return {f.name: getattr(cfg, f.name) for f in fields if _affects_results(type(cfg), f)}


def config_text(*configs: Any, **extra: Any) -> str:
    """Canonical JSON of every results-changing field of ``configs`` (by class name) plus
    ``extra`` (e.g. the partition's content hash): what a resumed run must match."""
    doc: dict[str, Any] = {type(c).__name__: results_fields(c) for c in configs}
    doc.update(extra)
    return json.dumps(doc, sort_keys=True, default=str)


def _fresh_run_dir(base: str, resume: bool) -> str:
    """Without ``--out`` every run gets a folder of its own, ``BASE/<date-time>``, so the same
    command can be run again and again (``--resume`` needs the folder it continues)."""
    if resume:
        raise ConfigError("--resume needs --out DIR: the folder of the run to continue")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, i = os.path.join(base, stamp), 1
    while os.path.exists(path):
        i += 1
        path = os.path.join(base, f"{stamp}-{i}")
    return path


def prepare_dir(path: str, flag: str = "--out") -> str:
    """Create the output folder ``path`` now, so an unusable path is a one-line error before
    any work (``ConfigError`` naming ``flag``); returns ``path``."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{flag} {path}: the folder is not writable")
    return path


# ------------------------------------------------------------------- shared configs


#: DataConfig fields that ``federate`` names otherwise (the bare names are other sections').
FEDERATE_NAMES: Mapping[str, str] = types.MappingProxyType(
    {"partition_seed": "seed", "partition_batch_size": "batch_size"}
)


def _federate_field(field: str, default: Any = dataclasses.MISSING, help: str | None = None,
                    **metadata: Any) -> Any:
    """DataConfig field ``field``: ``federate``'s argument, with its default and its text in
    federate's ``Args:`` (federate's other argument names in it shown as flags)."""
    name = FEDERATE_NAMES.get(field, field)
    doc = help or _attribute_docs(federate, "Args")[name]
    doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc).replace("``", "")  # plain text
    for arg in inspect.signature(federate).parameters:
        if "_" in arg:
            flag = "--" + {v: k for k, v in FEDERATE_NAMES.items()}.get(arg, arg).replace("_", "-")
            doc = re.sub(rf"(?<![\w-]){arg}(?![\w-])", flag, doc)
    if default is dataclasses.MISSING:
        default = inspect.signature(federate).parameters[name].default
    return dataclasses.field(default=default, metadata={"help": doc, **metadata})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the clients hold: a source partitioned by ``jaxpfl.data.federate.federate`` (its
    arguments, with its defaults; ``partition_seed`` is its ``seed``, ``partition_batch_size``
    its ``batch_size``: :data:`FEDERATE_NAMES`), or a saved split replayed exactly with
    ``partition_file``.

    Attributes:
      dataset: data source: mnist_embedded (shipped, no download), mnist, fashion_mnist (IDX
        files), emnist / cifar10 / tfds:NAME (prepared tfds dir), emnist_tff (TFF HDF5
        writers), femnist (LEAF JSON writers)
      data_dir: folder of the dataset files (none: the source's default)
      partition_file: replay this saved split (an .npz of experiments/partition.py or
        save_partition) instead of partitioning; leave the partition flags out

    Every other field is ``federate``'s argument: its default, its rule
    (:func:`~jaxpfl.data.federate.check_arguments`) and its text (the flag's help) are
    federate's; ``num_clients`` says its command-line default (20), ``partition`` has one
    (federate's is required).
    """

    dataset: str = dataclasses.field(default="mnist_embedded", metadata={"source": True})
    data_dir: str | None = dataclasses.field(default=None, metadata={**NO_EFFECT, "source": True})
    partition_file: str | None = dataclasses.field(
        default=None, metadata={**NO_EFFECT, "source": True}
    )
    partition: str = _federate_field("partition", default="dirichlet", choices=tuple(PARTITIONS))
    num_clients: int | None = _federate_field(
        "num_clients", help="total clients K (none: 20, or every writer for natural)")
    alpha: float = _federate_field("alpha")
    shards_per_client: int = _federate_field("shards_per_client")
    num_shards: int | None = _federate_field("num_shards")
    shard_size: int | None = _federate_field("shard_size")
    class_per_client: int = _federate_field("class_per_client")
    balance: bool | None = _federate_field("balance")
    train_frac: float = _federate_field("train_frac")
    val_frac: float = _federate_field("val_frac")
    holdout_frac: float = _federate_field("holdout_frac")
    n_eval: int | None = _federate_field("n_eval")
    partition_seed: int | None = _federate_field("partition_seed")
    holdout_seed: int | None = _federate_field("holdout_seed")
    pool: str = _federate_field("pool", choices=tuple(POOLS))
    min_size: int = _federate_field("min_size")
    min_samples: int = _federate_field("min_samples")
    max_tries: int | None = _federate_field("max_tries")
    partition_batch_size: int = _federate_field("partition_batch_size")
    allow_empty: bool = _federate_field("allow_empty")

    def __post_init__(self):
        if not self.dataset:
            raise ConfigError("--dataset must name a data source")
        # federate's own rules (one definition), checked before any data is loaded
        from_federate = {v: k for k, v in FEDERATE_NAMES.items()}
        try:
            check_arguments(**{FEDERATE_NAMES.get(f.name, f.name): getattr(self, f.name)
                               for f in dataclasses.fields(self)})
        except DataError as e:
            name, rest = str(e).split(" ", 1)
            raise ConfigError(f"{from_federate.get(name, name)} {rest}") from None


#: K when ``--num-clients`` is none and the partition is not ``natural`` (PFLlib's K).
DEFAULT_NUM_CLIENTS = 20


def load_dataset(cfg: DataConfig, raw: Any = None) -> Any:
    """Load ``cfg.dataset`` (or take ``raw``, already loaded) and partition it as ``cfg``
    says, or replay ``cfg.partition_file``.

    The PFLlib modes use their own fixed stream (``RandomState(1)``, PFLlib's seed, continued
    into the per-client split) unless ``partition_seed`` is set; no partition follows the
    run's ``--seed``.
    """
    from jaxpfl.data.sources import load_raw  # looked up at call time (tests replace it)

    raw = load_raw(cfg.dataset, cfg.data_dir) if raw is None else raw
    if cfg.partition_file is not None:
        from jaxpfl.data.store import load_partition

        return load_partition(cfg.partition_file, raw)
    from jaxpfl.data.federate import federate

    kw = {FEDERATE_NAMES.get(f.name, f.name): getattr(cfg, f.name)
          for f in dataclasses.fields(cfg) if not f.metadata.get("source")}
    if kw["num_clients"] is None and cfg.partition != "natural":
        kw["num_clients"] = DEFAULT_NUM_CLIENTS
    return federate(raw, **kw)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Clients per round (docs/algorithms.md §1.4), as a count or as a fraction: give one.

    Attributes:
      clients: clients per round M, a count (an integer >= 1, at most the training clients)
      participation: clients per round as a fraction C in (0, 1] of the training clients
        (M = max(1, floor(C K)))
    """

    clients: int | None = dataclasses.field(default=None, metadata={"exclusive": "per_round"})
    participation: float | None = dataclasses.field(
        default=None, metadata={"exclusive": "per_round"}
    )

    def __post_init__(self):
        if (self.clients is None) == (self.participation is None):
            raise ConfigError(
                "give the clients per round once: --clients N (a count) or --participation C "
                "(a fraction in (0, 1])"
            )
        c = self.clients
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ConfigError(
                f"--clients must be an integer >= 1 (clients per round), got {c!r}; "
                "for a fraction use --participation"
            )
        p = self.participation
        if p is not None and not (isinstance(p, int | float) and 0.0 < p <= 1.0):
            raise ConfigError(
                f"--participation must be a fraction in (0, 1], got {p!r}; "
                "for a count of clients per round use --clients"
            )

    def per_round(self, num_train: int) -> int:
        """M for ``num_train`` training clients: the driver's rule
        (``jaxpfl.run.clients_per_round``; an error when the count exceeds them)."""
        from jaxpfl.run import clients_per_round

        spec = self.clients if self.clients is not None else float(self.participation)
        return clients_per_round(spec, num_train)


@dataclasses.dataclass(frozen=True)
class StrategyArgs:
    """How clients are mapped onto the device; never what is computed. The one dataclass the
    engine's ``Strategy`` (and its ``ExecOptions``) is built from (:func:`strategy_from_args`):
    its defaults are theirs, none meaning the backend's default (``default_strategy``).

    Attributes:
      strategy: vmap, chunked, sequential or sharded (none: the fastest measured for the
        backend: sequential on CPU, vmap on GPU/TPU)
      chunk_size: clients per chunk (--strategy chunked; lower it when the device runs out of
        memory)
      step_block: steps per jitted call with --strategy sequential (none: 64 on CPU)
      unroll: scan unroll factor (jitted strategies)
      client_state: where per-client state lives between rounds: device, host (only the rows
        a call needs are moved) or auto (the device when the stack fits in half its memory)
      pool_layout: the examples on the devices with --strategy sharded: replicated (every
        device holds all) or per-device (each device holds only its own clients' examples,
        each process loads only its devices' share)
      devices: local devices the clients are spread over: --strategy sequential trains
        client i on device i mod N, at the same time (none: one per CPU core on a CPU, else
        one); --strategy sharded makes its mesh of them (none: every device)
      buckets: at most this many client-size groups per mapped call (jitted strategies):
        each group is one compiled shape, padded to its widest client; fewer groups compile
        faster, more pad less (none: the engine's default, ``Strategy.buckets``)
    """

    strategy: str | None = dataclasses.field(
        default=None, metadata={**NO_EFFECT, "choices": tuple(STRATEGIES)}
    )
    chunk_size: int = dataclasses.field(default=Strategy.chunk_size, metadata=NO_EFFECT)
    step_block: int | None = dataclasses.field(default=None, metadata=NO_EFFECT)
    unroll: int = dataclasses.field(default=ExecOptions.unroll, metadata=NO_EFFECT)
    client_state: str = dataclasses.field(
        default=Strategy.client_state, metadata={**NO_EFFECT, "choices": tuple(CLIENT_STATES)}
    )
    pool_layout: str = dataclasses.field(
        default=Strategy.pool_layout, metadata={**NO_EFFECT, "choices": tuple(POOL_LAYOUTS)}
    )
    devices: int | None = dataclasses.field(default=Strategy.num_devices, metadata=NO_EFFECT)
    buckets: int | None = dataclasses.field(default=None, metadata=NO_EFFECT)

    def __post_init__(self):
        for name in ("chunk_size", "step_block", "unroll", "devices", "buckets"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}")


def strategy_from_args(args: StrategyArgs) -> Any:
    """The engine's ``Strategy`` for ``args`` (the backend's default where none is given)."""
    from jaxpfl.core.engine import default_strategy

    base = default_strategy()
    name = args.strategy or base.name
    block = args.step_block if args.step_block is not None else base.exec.step_block
    if name != "sequential" and args.step_block is None:
        block = None
    extra = {} if args.buckets is None else {"buckets": args.buckets}
    devices = args.devices
    if devices is None and name == base.name:
        devices = base.num_devices
    if name == "sequential" and devices is not None and devices > len(jax.local_devices()):
        raise ConfigError(f"--devices {devices}: this process has {len(jax.local_devices())} "
                          "local devices (on a CPU: JAXPFL_CPU_DEVICES=N before the start)")
    return Strategy(
        name, chunk_size=args.chunk_size, exec=ExecOptions(unroll=args.unroll, step_block=block),
        num_devices=devices, client_state=args.client_state, pool_layout=args.pool_layout,
        **extra,
    )


# ----------------------------------------------------------------- presets and references


@dataclasses.dataclass(frozen=True)
class AtLeast:
    """A reference setting satisfied by any value >= ``value`` (e.g. enough rounds)."""

    value: float

    def matches(self, v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and v >= self.value

    def __str__(self) -> str:
        return f">= {format_value(self.value)}"


#: What a :class:`Reference` is: a number someone else published (a paper, a peer library's
#: own benchmark or its code run by us), or jaxpfl's own earlier measurement, which only
#: guards against regressions and is never called published.
REFERENCE_KINDS: Mapping[str, str] = types.MappingProxyType(
    {"published": "published", "regression": "regression reference"}
)


@dataclasses.dataclass(frozen=True)
class Reference:
    """Numbers someone measured, and the setting they were measured in.

    ``values`` maps a cell (the run's values of the names in ``cell``) to one number per
    ``columns`` entry. ``setting`` maps names (fields, or derived names the script supplies,
    such as ``clients_per_round``) to the value of the measurement (or :class:`AtLeast`).
    ``kind``: ``published`` (numbers of a paper or a peer's own benchmark) or ``regression``
    (jaxpfl's own earlier run: printed as a regression reference, never as published).
    ``reads`` maps each column to the ``(metric, statistic)`` of summary.json it is compared
    with (ours = 100 × ``summary[metric][statistic]``, mean over the run's seeds).
    With ``whole_preset``, every results-changing value of the preset (except ``ignore``: the
    seed, and the two spellings of clients per round, which a derived ``clients_per_round``
    states once) is part of the setting too (``setting`` entries override it).
    """

    source: str
    metric: str
    columns: tuple[str, ...]
    values: Mapping[tuple, tuple[float, ...]]
    cell: tuple[str, ...] = ()
    setting: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    whole_preset: bool = False
    ignore: tuple[str, ...] = ("seed", "clients", "participation")
    kind: str = "published"
    reads: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in REFERENCE_KINDS:
            raise TypeError(f"Reference kind {self.kind!r}: one of {', '.join(REFERENCE_KINDS)}")
        missing = [c for c in self.columns if c not in self.reads]
        if missing or set(self.reads) - set(self.columns):
            raise TypeError(
                f"Reference {self.source!r}: reads must map each column {self.columns} to the "
                f"(summary.json metric, statistic) it is, got {dict(self.reads)}"
            )

    @property
    def label(self) -> str:
        """How the numbers are named where they are shown: ``published`` (a paper's or a
        peer's own benchmark) or ``regression reference`` (jaxpfl's own earlier run)."""
        return REFERENCE_KINDS[self.kind]


#: PFLlib's common setting (its ``system/main.py`` defaults on its Fashion-MNIST Dir(0.1)
#: generator): the exact ``pfllib_dir`` split of 20 clients (seed 1, 75/25;
#: docs/algorithms.md §7.3), every client every round, FedAvgCNN, client SGD 0.005, B 10,
#: E 1, drop_last, 2000 rounds. Every ``pfllib`` preset starts from it.
PFLLIB_FMNIST: Mapping[str, Any] = types.MappingProxyType(dict(
    dataset="fashion_mnist", partition="pfllib_dir", alpha=0.1, num_clients=20, train_frac=0.75,
    participation=1.0, model="cnn", client_lr=0.005, batch_size=10, local_epochs=1,
    drop_last=True, rounds=2000,
))


class CpuScale(typing.NamedTuple):
    """The overrides that make a preset fit under about 30 minutes per seed on a 2-core CPU
    (``experiments/reproduce.py --scale cpu``), and why they are what they are."""

    overrides: Mapping[str, Any]
    why: str


class Headline(typing.NamedTuple):
    """The number reported as ours for a preset without a reference:
    ``summary[metric][statistic]`` (``history_metric``: the per-round entry the plot draws,
    the first of ``|``-separated names a run records)."""

    metric: str
    statistic: str
    history_metric: str
    why: str
    label: str


class Baseline(typing.NamedTuple):
    """A baseline on the same data, for presets without a published number: either the same
    script run again with ``flags`` (same seeds; its headline is read like ours), or a
    ``metric`` (summary entry, statistic) of our own run."""

    name: str
    flags: tuple[str, ...] = ()
    metric: tuple[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named reference setting: field overrides, the exact command, what its result is
    compared with, and its cost on a 2-core CPU. ``smoke``: overrides that shrink it to a
    seconds-long run (``--smoke``; for tests, the numbers mean nothing). What the reproduction
    report needs is part of the preset: ``cpu`` (its CPU scale), ``headline`` (the number
    reported as ours when it has no reference; else the last column of its first reference)
    and ``baselines`` (run on the same data where no published number exists); ``curves``:
    per-round metrics of metrics.jsonl the report keeps and tabulates (mean over seeds)."""

    name: str
    about: str
    overrides: Mapping[str, Any]
    command: str
    cost: str
    smoke: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    references: tuple[Reference, ...] = ()
    data: str = "shipped with jaxpfl"
    cpu: CpuScale | None = None
    headline: Headline | None = None
    baselines: tuple[Baseline, ...] = ()
    curves: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Parsed:
    """The parsed command line: one config instance per section class, the resolved values
    of every flag, which flags were given, and the preset."""

    cli: ExperimentCli
    preset: Preset | None
    smoke: bool
    values: Mapping[str, Any]
    given: frozenset[str]
    configs: Mapping[type, Any]
    spelled: Mapping[str, str]

    def __getitem__(self, cls: type) -> Any:
        return self.configs[cls]

    def flag(self, name: str) -> str:
        if name in self.cli.specs:
            return self.spelled.get(name, self.cli.specs[name].flag)
        return self.cli.derived.get(name, name)

    def config_text(self, *replaced: Any, **extra: Any) -> str:
        """:func:`config_text` of every section's config (``replaced`` configs stand in for
        those of their class, e.g. a ``RunConfig`` with one seed of ``--seeds``)."""
        configs = dict(self.configs)
        for c in replaced:
            if type(c) not in configs:
                raise TypeError(f"{type(c).__name__} is not a section of this command line")
            configs[type(c)] = c
        doc: dict[str, Any] = {}
        for cls, c in configs.items():  # a section's excluded fields are no flag: left out
            flags = {s.name for s in self.cli.by_class[cls]}
            doc[cls.__name__] = {k: v for k, v in results_fields(c).items() if k in flags}
        doc.update(extra)
        return json.dumps(doc, sort_keys=True, default=str)

    def reference_lines(self, run_values: Mapping[str, Any], ours: Mapping[str, float]) -> list:
        """One line per reference of the preset: the published numbers beside ours when the
        run's setting matches, else ``not comparable: ...`` naming what differs."""
        return self.cli.reference_lines(self, run_values, ours)

    def ours(self, summaries: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Our number of every reference column (``Reference.reads``): 100 × the summary's
        metric and statistic, mean over ``summaries`` (one per seed); absent when a summary
        lacks it."""
        out: dict[str, float] = {}
        for ref in self.preset.references if self.preset else ():
            for c, (metric, stat) in ref.reads.items():
                vals = [s.get(metric, {}).get(stat) if isinstance(s.get(metric), dict) else None
                        for s in summaries]
                if vals and all(v is not None for v in vals):
                    out[c] = 100.0 * sum(float(v) for v in vals) / len(vals)
        return out

    def report_references(
        self,
        run_values: Mapping[str, Any],
        summaries: Sequence[Mapping[str, Any]],
        out: str | None = None,
    ) -> list[dict[str, Any]]:
        """Compare the run with every reference of the preset: print one line each (see
        :meth:`reference_lines`) and record the comparisons (:meth:`ExperimentCli.compare_all`)
        as ``references`` in ``out``/summary.json, where the report reads them."""
        entries = self.cli.compare_all(self, run_values, self.ours(summaries))
        for line in self.cli.format_references(self, entries):
            print(line)
        path = os.path.join(out, "summary.json") if out else None
        if path and os.path.exists(path):
            with open(path) as f:
                summary = json.load(f)
            summary["references"] = entries
            with open(path, "w") as f:
                json.dump(summary, f, indent=2)
        return entries


class _Removed(argparse.Action):
    def __init__(self, *args: Any, hint: str = "", what: str = "was removed", **kwargs: Any):
        self.hint, self.what = hint, what
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} {self.what}: {self.hint}")


_CONTROL = ("preset", "smoke", "list_presets")


def section_prefix(title: str) -> str:
    """The namespace of a section's flags: its title, lower case, words joined by ``-``
    (``data`` → ``--data.alpha``, ``Per-FedAvg`` → ``--per-fedavg.inner-lr``)."""
    return "-".join(re.findall(r"[a-z0-9]+", title.lower()))


class ExperimentCli:
    """The command line of one experiment script, generated from its config classes.

    ``sections``: ``(title, dataclass)`` or ``(title, dataclass, excluded fields)``. Every
    field has a namespaced flag ``--<section>.<field>`` (:func:`section_prefix`), and the
    bare ``--<field>`` too: field names are unique across the sections (defining one twice is
    an error), so no flag can reach two fields. ``ambiguous``: bare names that would read as
    another section's setting (a paper's symbol of the algorithm, e.g. Per-FedAvg's α beside
    the Dirichlet ``--alpha``) → why; those are refused in one line, only the namespaced flag
    sets the field. ``presets``: :class:`Preset` entries (the first is the default).
    ``defaults``: the script's own defaults (below the presets). ``aliases``: extra spellings
    per field. ``removed``: old flags and what to use instead. ``derived``: names the script
    computes after loading data, usable in reference settings, with their labels.
    ``exclusive``: extra groups of fields that are spellings of one setting.
    """

    def __init__(
        self,
        description: str,
        sections: Sequence[tuple],
        presets: Sequence[Preset] = (),
        *,
        defaults: Mapping[str, Any] | None = None,
        aliases: Mapping[str, Sequence[str]] | None = None,
        removed: Mapping[str, str] | None = None,
        derived: Mapping[str, str] | None = None,
        exclusive: Sequence[Sequence[str]] = (),
        prog: str | None = None,
        ambiguous: Mapping[str, str] | None = None,
    ):
        self.description, self.prog = description, prog
        self.sections = [(s[0], s[1], tuple(s[2]) if len(s) > 2 else ()) for s in sections]
        self.presets = {p.name: p for p in presets}
        self.default_preset = presets[0].name if presets else None
        self.defaults = dict(defaults or {})
        self.removed = dict(removed or {})
        self.derived = dict(derived or {})
        self.ambiguous = dict(ambiguous or {})
        self.specs: dict[str, FieldSpec] = {}
        self.by_class: dict[type, list[FieldSpec]] = {}
        for title, cls, exclude in self.sections:
            prefix = section_prefix(title)
            specs = []
            for s in field_specs(cls, aliases=aliases, exclude=exclude):
                if s.name in self.specs or s.name in _CONTROL:
                    raise TypeError(f"field {s.name!r} of {cls.__name__} is defined twice")
                spaced = f"--{prefix}.{s.flag[2:]}"
                if s.name in self.ambiguous:  # only the namespaced flag sets it
                    s = dataclasses.replace(s, flag=spaced)
                else:
                    s = dataclasses.replace(s, aliases=(*s.aliases, spaced))
                specs.append(s)
                self.specs[s.name] = s
            self.by_class[cls] = specs
        for name in [*(aliases or {}), *self.ambiguous]:
            if name not in self.specs:
                raise TypeError(f"alias or ambiguous name for unknown field {name!r}")
        self.groups: dict[str, list[str]] = {}
        for s in self.specs.values():
            if s.exclusive:
                self.groups.setdefault(s.exclusive, []).append(s.name)
        for i, members in enumerate(exclusive):
            self.groups[f"_group{i}"] = list(members)
        self._check_presets()

    # -- presets as data --------------------------------------------------------------

    def _check_presets(self) -> None:
        """Every name in the defaults and preset tables is a field (or a derived name in a
        reference setting) and every value has the field's type; errors are bugs."""
        self._coerce_layer(self.defaults, "script defaults")
        for p in self.presets.values():
            self._coerce_layer(p.overrides, f"preset {p.name}")
            self._coerce_layer(p.smoke, f"preset {p.name} (smoke)")
            for ref in p.references:
                for name in (*ref.setting, *ref.cell):
                    if name not in self.specs and name not in self.derived:
                        raise TypeError(f"preset {p.name}: reference names unknown {name!r}")

    def _coerce_layer(self, layer: Mapping[str, Any], where: str) -> dict[str, Any]:
        out = {}
        for k, v in layer.items():
            if k not in self.specs:
                raise TypeError(f"{where}: unknown field {k!r}")
            out[k] = _coerce(self.specs[k], v, where)
        return out

    def _group_of(self, name: str) -> list[str]:
        for members in self.groups.values():
            if name in members:
                return members
        return []

    def resolve(self, layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Merge layers (later wins); setting one field of an exclusive group drops the others
        set by lower layers. Unset fields take their dataclass default."""
        values: dict[str, Any] = {}
        for layer in layers:
            for k, v in layer.items():
                for other in self._group_of(k):
                    if other != k:
                        values.pop(other, None)
                values[k] = v
        for name, s in self.specs.items():
            values.setdefault(name, s.default)
        return values

    def _layers(self, preset: Preset | None, smoke: bool) -> list[dict[str, Any]]:
        layers = [self._coerce_layer(self.defaults, "script defaults")]
        if preset is not None:
            layers.append(self._coerce_layer(preset.overrides, f"preset {preset.name}"))
            if smoke:
                layers.append(self._coerce_layer(preset.smoke, f"preset {preset.name}"))
        return layers

    def preset_values(self, name: str, smoke: bool = False) -> dict[str, Any]:
        """Every field's value under preset ``name`` before command-line flags."""
        return self.resolve(self._layers(self.presets[name], smoke))

    # -- parsing ----------------------------------------------------------------------

    def _add_control(self, p: argparse.ArgumentParser) -> None:
        if not self.presets:
            return
        g = p.add_argument_group("presets")
        g.add_argument(
            "--preset",
            default=self.default_preset,
            choices=list(self.presets),
            help="reference setting whose values the other flags override "
            f"[default: {self.default_preset}]",
        )
        g.add_argument(
            "--smoke",
            action="store_true",
            help="shrink the preset to a seconds-long run (tests; the numbers mean nothing)",
        )
        g.add_argument(
            "--list-presets",
            action="store_true",
            help="print every preset (settings, command, published numbers, cost) and exit",
        )

    def build_parser(self, base: Mapping[str, Any] | None = None) -> CliParser:
        """The full parser; ``base`` values are shown as the defaults."""
        base = self.resolve([]) if base is None else base
        names = ", ".join(self.presets)
        p = CliParser(
            prog=self.prog,
            description=self.description,
            epilog=f"presets: {names} (--list-presets shows them)" if self.presets else None,
        )
        self._add_control(p)
        for title, cls, _ in self.sections:
            add_config_args(p, cls, group=title, defaults=base, suppress=True,
                            specs=self.by_class[cls])
        for flag, hint in self.removed.items():
            p.add_argument(flag, action=_Removed, hint=hint, nargs="?", help=argparse.SUPPRESS)
        for name, why in self.ambiguous.items():
            bare = "--" + name.replace("_", "-")
            spec = self.specs[name]
            hint = f"{why}; {spec.flag} sets the {_short(spec.help)}"
            p.add_argument(bare, action=_Removed, hint=hint, nargs="?", help=argparse.SUPPRESS,
                           what="is ambiguous here", dest=f"_refused_{name}")
        return p

    def parse(self, argv: Sequence[str] | None = None) -> Parsed:
        """Parse ``argv``: layer the values, build and validate every section's config."""
        argv = list(sys.argv[1:] if argv is None else argv)
        pre = CliParser(prog=self.prog, add_help=False)
        self._add_control(pre)
        control, _ = pre.parse_known_args(argv)
        if getattr(control, "list_presets", False):
            print(self.format_presets())
            raise SystemExit(0)
        preset = self.presets[control.preset] if self.presets else None
        smoke = bool(getattr(control, "smoke", False))
        layers = self._layers(preset, smoke)
        parser = self.build_parser(self.resolve(layers))
        ns = parser.parse_args(argv)
        spelled: dict[str, str] = {}
        alias_of = {a: s.name for s in self.specs.values() for a in s.aliases}
        for tok in argv:
            opt = tok.split("=", 1)[0]
            opt = "--" + opt[5:] if opt.startswith("--no-") and "--" + opt[5:] in alias_of else opt
            if opt in alias_of:
                spelled[alias_of[opt]] = opt
        given = {k: v for k, v in vars(ns).items() if k in self.specs}
        for members in self.groups.values():
            hit = [m for m in members if m in given]
            if len(hit) > 1:
                a, b = (spelled.get(m, self.specs[m].flag) for m in hit[:2])
                parser.error(f"give {a} or {b}, not both: they set the same thing")
        given = self._coerce_layer(given, "flag")
        values = dict(self.resolve([*layers, given]))
        if "out" in self.specs and "out" not in given and values.get("out"):
            values["out"] = _fresh_run_dir(values["out"], bool(values.get("resume")))
        configs = {}
        for _, cls, _ in self.sections:
            specs = self.by_class[cls]
            kwargs = {s.name: values[s.name] for s in specs}
            configs[cls] = build_config(cls, kwargs, specs, spelled)
        parsed = Parsed(self, preset, smoke, values, frozenset(given), configs, spelled)
        self._check_partition_file(parsed)
        return parsed

    def _check_partition_file(self, parsed: Parsed) -> None:
        data = parsed.configs.get(DataConfig)
        if data is None or data.partition_file is None:
            return
        clash = [
            parsed.flag(s.name)
            for s in self.by_class[DataConfig]
            if s.name in parsed.given and not _field(DataConfig, s.name).metadata.get("source")
        ]
        if clash:
            raise ConfigError(
                f"--partition-file replays a saved split exactly; drop {', '.join(clash)}"
            )

    # -- references -------------------------------------------------------------------

    def _label(self, name: str) -> str:
        return self.specs[name].flag if name in self.specs else self.derived.get(name, name)

    def _setting(self, preset: Preset, ref: Reference) -> dict[str, Any]:
        setting: dict[str, Any] = {}
        if ref.whole_preset:
            base = self.preset_values(preset.name)
            for name, s in self.specs.items():
                if s.affects_results and name not in ref.ignore and name not in ref.cell:
                    setting[name] = base[name]
        setting.update(ref.setting)
        return setting

    def compare(
        self, preset: Preset, ref: Reference, run_values: Mapping[str, Any]
    ) -> tuple[tuple[float, ...] | None, list[str]]:
        """(the reference's numbers for this run's cell, or None; what differs)."""
        reasons = []
        for name, want in self._setting(preset, ref).items():
            have = run_values.get(name)
            ok = want.matches(have) if isinstance(want, AtLeast) else _same(have, want)
            if not ok:
                shown = want if isinstance(want, AtLeast) else format_value(want)
                reasons.append(f"{self._label(name)} {shown} (this run: {format_value(have)})")
        key = tuple(run_values.get(n) for n in ref.cell)
        numbers = ref.values.get(key)
        if numbers is None:
            names = ", ".join(self._label(n) for n in ref.cell)
            cells = " ".join("(" + ", ".join(map(format_value, c)) + ")" for c in ref.values)
            mine = ", ".join(map(format_value, key))
            reasons.append(f"({names}) in {cells} (this run: ({mine}))")
        return (None if reasons else numbers), reasons

    def compare_all(
        self, parsed: Parsed, run_values: Mapping[str, Any], ours: Mapping[str, float]
    ) -> list[dict[str, Any]]:
        """One record per reference of the preset (what summary.json keeps): its source, kind
        and columns, the setting it was measured in (flag -> value), whether this run's
        setting matches (else what differs), its numbers for this run's cell, and ours."""
        preset = parsed.preset
        entries = []
        for ref in preset.references if preset else ():
            numbers, reasons = self.compare(preset, ref, run_values)
            key = tuple(run_values.get(n) for n in ref.cell)
            entries.append(dict(
                source=ref.source,
                kind=ref.kind,
                label=ref.label,
                metric=ref.metric,
                columns=list(ref.columns),
                reads={c: list(ref.reads[c]) for c in ref.columns},
                setting={
                    self._label(k): str(v) if isinstance(v, AtLeast) else format_value(v)
                    for k, v in self._setting(preset, ref).items()
                },
                comparable=numbers is not None,
                not_comparable_because=None if numbers is not None else list(reasons),
                cell=None if numbers is None else dict(zip(ref.cell, key)),
                published=None if numbers is None else dict(zip(ref.columns, numbers)),
                ours={c: ours.get(c) for c in ref.columns},
            ))
        return entries

    def format_references(self, parsed: Parsed, entries: Sequence[Mapping[str, Any]]) -> list:
        """The printed form of :meth:`compare_all`'s records."""
        if parsed.preset is None:
            return []
        if not entries:
            return [f"published: none for preset {parsed.preset.name}"]
        lines = []
        for e in entries:
            if not e["comparable"]:
                lines.append(f"not comparable: {e['source']} was measured with "
                             + "; ".join(e["not_comparable_because"]))
                continue
            pub = ", ".join(f"{c} {v:.2f}" for c, v in e["published"].items())
            mine = ", ".join(f"{c} n/a" if v is None else f"{c} {v:.2f}"
                             for c, v in e["ours"].items())
            lines.append(f"{e['label']} ({e['source']}; metric: {e['metric']}): {pub} "
                         f"| this run: {mine}")
        return lines

    def reference_lines(
        self, parsed: Parsed, run_values: Mapping[str, Any], ours: Mapping[str, float]
    ) -> list[str]:
        return self.format_references(parsed, self.compare_all(parsed, run_values, ours))

    def format_presets(self) -> str:
        """The preset table as text (``--list-presets``)."""
        out = []
        for p in self.presets.values():
            base = self.resolve(self._layers(p, False))
            shown = [
                _as_flag(self.specs[k], base[k])
                for k in self.specs
                if k in p.overrides or k in self.defaults
            ]
            out.append(f"{p.name}: {p.about}")
            out.append(f"  command:   {p.command}")
            out.append(f"  settings:  {' '.join(shown)}")
            out.append(f"  data:      {p.data}")
            out.append(f"  cost:      {p.cost}")
            if p.smoke:
                smoke = " ".join(_as_flag(self.specs[k], v) for k, v in p.smoke.items())
                out.append(f"  --smoke:   {smoke}")
            for ref in p.references:
                setting = self._setting(p, ref)
                own = ", ".join(
                    f"{self._label(k)} {v if isinstance(v, AtLeast) else format_value(v)}"
                    for k, v in ref.setting.items()
                )
                whole = "every setting of the preset" if ref.whole_preset else ""
                cells = "; ".join(
                    (f"({', '.join(map(format_value, c))}) " if c else "")
                    + " / ".join(f"{v:.2f}" for v in nums)
                    for c, nums in ref.values.items()
                )
                out.append(f"  compare:   {ref.label}: {ref.source}; metric: {ref.metric}")
                out.append(
                    "             measured with "
                    + " and ".join(x for x in (whole, own) if x)
                    + (f" ({len(setting)} settings)" if whole else "")
                )
                names = ", ".join(self._label(n) for n in ref.cell)
                out.append(
                    f"             {' / '.join(ref.columns)}"
                    + (f" by ({names})" if names else "")
                    + f": {cells}"
                )
            if not p.references:
                out.append("  compare:   no published number")
            out.append("")
        return "\n".join(out).rstrip()


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _same(have: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool) or want is None or have is None:
        return have is want or have == want and type(have) is type(want)
    if isinstance(want, int | float) and isinstance(have, int | float):
        return math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(want, tuple | list) and isinstance(have, tuple | list):
        return len(want) == len(have) and all(_same(a, b) for a, b in zip(have, want))
    return have == want
