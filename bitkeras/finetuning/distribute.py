"""Hardware for training: tf.distribute strategies, mixed precision and XLA, chosen for the user.

`strategy_for("auto")` picks, in this order: TPUStrategy when a TPU is
reachable (`TPU_NAME` or `COLAB_TPU_ADDR` set, or TPU devices on this host),
MultiWorkerMirroredStrategy when `TF_CONFIG` names several workers,
MirroredStrategy for several local GPUs, else TensorFlow's default strategy
(one device). The strategy made is kept, so later calls return the same one.

TensorFlow can only set up a multi-worker (or TPU) strategy before it has
run anything: call `strategy_for("auto")` at the top of a multi-worker
program, before building models; `fit(strategy="auto")` then finds it.

Precision: "float32", "mixed_bfloat16" or "mixed_float16" (Keras dtype
policies: float32 variables, half-precision compute). In every case the
GroupNorm statistics (Keras's GroupNormalization computes them in float32),
the weight standardization (`StandardizedConv2D`) and the head stay in
float32; "mixed_float16" trains with Keras's dynamic loss scaling.
"""

import contextlib
import json
import os

import keras
import tensorflow as tf

from bitkeras import compat
from bitkeras.checks import PRECISIONS, STRATEGY_NAMES  # what this module's calls accept

_made = {}


def strategy_for(strategy="auto"):
    """A `tf.distribute.Strategy` from a name in `STRATEGY_NAMES` or a strategy (returned as is)."""
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if strategy not in STRATEGY_NAMES:
        raise ValueError(
            f"strategy must be a tf.distribute.Strategy or one of {list(STRATEGY_NAMES)}; "
            f"got {strategy!r}"
        )
    if strategy == "auto":
        strategy = auto_choice()
    if strategy == "default":
        return tf.distribute.get_strategy()
    if strategy not in _made:
        _made[strategy] = _make(strategy)
    return _made[strategy]


def auto_choice():
    """The strategy name "auto" stands for on this machine (see the module docstring)."""
    if _tpu_address() is not None:
        return "tpu"
    if worker_count() > 1:
        return "multi_worker"
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def _make(name):
    try:
        if name == "tpu":
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
                tpu=_tpu_address() or "local")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        if name == "multi_worker":
            return tf.distribute.MultiWorkerMirroredStrategy()
        return tf.distribute.MirroredStrategy()
    except RuntimeError as error:
        if "startup" not in str(error) and "initialized" not in str(error):
            raise
        raise RuntimeError(
            f"TensorFlow cannot set up the {name} strategy now: it must be made before "
            f"TensorFlow runs anything ({error}). Call bitkeras.finetuning.distribute.strategy_for("
            f"{name!r}) (or 'auto') at the top of the program, before building a model."
        ) from error


def _tpu_address():
    for variable in ("TPU_NAME", "COLAB_TPU_ADDR"):
        if os.environ.get(variable):
            return os.environ[variable]
    if tf.config.list_physical_devices("TPU"):
        return "local"
    return None


def _cluster():
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    return config.get("cluster", {}), config.get("task", {})


def worker_count():
    """Workers (chief included) that `TF_CONFIG` names; 1 without it."""
    cluster, _ = _cluster()
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def is_chief():
    """Whether this process is the one that writes files: the chief, else worker 0."""
    cluster, task = _cluster()
    kind, index = task.get("type"), task.get("index", 0)
    if kind is None:
        return True
    if "chief" in cluster:
        return kind == "chief"
    return kind == "worker" and index == 0


def jit_compile_for(jit_compile, strategy):
    """XLA on where it is faster: TPUs (which need it) and GPUs; off on CPUs.

    On a CPU "auto" gives False here: whether XLA is faster there depends on
    the CPU and the model, which `fit` and `pretrain` measure
    (`bitkeras.finetuning.xla.resolve`). Under Keras's JAX backend "auto" is
    always XLA: without its jit, JAX runs a step op by op.
    """
    if jit_compile != "auto":
        return bool(jit_compile)
    return keras.backend.backend() == "jax" or on_accelerator(strategy)


def on_accelerator(strategy):
    """Whether `strategy` (the default one: this machine) runs on GPUs or TPUs."""
    if is_default(strategy):
        devices = [device.name for device in tf.config.list_logical_devices()]
    else:
        devices = strategy.extended.worker_devices
    return any(kind in device.upper() for device in devices for kind in (":GPU:", ":TPU:"))


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}; got {precision!r}")


@contextlib.contextmanager
def dtype_policy(precision):
    """Layers built inside use the Keras dtype policy `precision`."""
    check_precision(precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def training_strategy(model, strategy):
    """The strategy `model` trains under: the one it was built in, else `strategy` resolved."""
    built_in = model_strategy(model)
    if built_in is None:
        return strategy_for(strategy)
    if strategy == "auto" or strategy is built_in:
        return built_in
    raise ValueError(
        f"{model.name} was built in the scope of {type(built_in).__name__} and trains "
        f"under it; got strategy={strategy!r}. Leave strategy='auto', or build the "
        f"model outside any strategy scope."
    )


def needs_replica(model, strategy, precision):
    """Whether training `model` under `strategy` and `precision` needs a rebuilt copy of it."""
    check_precision(precision)
    return precision != "float32" or (model_strategy(model) is None and not is_default(strategy))


def replicate(model, strategy, precision):
    """`model` rebuilt from its config in `strategy`'s scope, dtype policy `precision`, same weights.

    Several workers each start from the first replica's (the chief's) weights.
    Train the copy, then copy its weights back with `model.set_weights`.
    """
    config = model.get_config()
    backbone = config.get("backbone")
    if isinstance(backbone, dict) and "dtype" in backbone.get("config", {}):
        # A keras-hub backbone records its policy, which would win over the global one.
        backbone["config"]["dtype"] = precision
    with strategy.scope():
        with dtype_policy(precision):
            replica = type(model).from_config(config)
        replica.set_weights(model.get_weights())
    if worker_count() > 1:
        broadcast_from_first_replica(strategy, replica.variables)
    return replica


def strategy_of(model):
    """The tf.distribute strategy `model` runs under: Keras's `distribute_strategy` under
    the TensorFlow backend; under another backend, which has no such strategy, the
    default one (this process, one device, as far as tf.data and bitkeras are concerned)."""
    strategy = getattr(model, "distribute_strategy", None)
    return strategy if strategy is not None else tf.distribute.get_strategy()


def model_strategy(model):
    """The strategy `model`'s variables were made under, or None for plain variables."""
    return compat.model_strategy(model)


def broadcast_from_first_replica(strategy, variables):
    """Gives every replica (on every worker) the first replica's values of `variables`.

    Workers that built their models from different random draws would
    otherwise train different models; after this they hold the chief's.
    """

    def first_only(value):
        context = tf.distribute.get_replica_context()
        keep = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), value.dtype)
        return context.all_reduce(tf.distribute.ReduceOp.SUM, value * keep)

    @tf.function
    def reduced():
        return strategy.run(lambda: [first_only(tf.convert_to_tensor(v.value)) for v in variables])

    for variable, value in zip(variables, reduced()):
        variable.assign(strategy.experimental_local_results(value)[0])


def reducible_logs(logs, strategy):
    """A step's metric logs in the shape Keras can average across workers.

    Under MultiWorkerMirroredStrategy Keras averages each log along axis 0,
    which fails on scalars (keras-team/keras#20585); as vectors of one value
    they average to the same scalar. Other strategies get `logs` unchanged.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or (
            worker_count() < 2):
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


def is_default(strategy):
    """Whether `strategy` is TensorFlow's default (no distribution: one device, plain variables)."""
    return type(strategy).__name__ == "_DefaultDistributionStrategy"
