"""Every private Keras and TensorFlow API bitkeras uses, in one place, with the versions checked.

Each is here because no public API does the job (said per item). When Keras or
TensorFlow changes one, this module is the one to mend; `KERAS_CHECKED` and
`TENSORFLOW_CHECKED` are the releases whose source each was read against and
whose tests pass, and setup.py's pins allow no others.
"""

import contextlib

KERAS_CHECKED = ("3.15",)
"""Keras releases (major.minor) every item below was checked on."""

TENSORFLOW_CHECKED = ("2.20", "2.21")
"""TensorFlow releases (major.minor) every item below was checked on: read against 2.21's
source; on 2.20 (with keras-hub 0.31) the whole suite, which runs every item, passes."""

KERAS_FIT_VALIDATION = "_use_cached_eval_dataset"
"""The keyword Keras's `fit` passes to `evaluate` for its validation passes (Keras's
`Trainer.fit`): a classifier's own `evaluate` hands those back to Keras's loop."""


def all_layers(model):
    """Every layer inside `model`, nested ones included (`Layer._flatten_layers`; the public
    `layers` lists only the top level, and not layers held as attributes of a layer)."""
    return list(model._flatten_layers())


def rebuild_functional(model, outputs):
    """Makes functional `model` compute `outputs` from its inputs instead (a head added on
    its symbolic features), keeping its name, compile state and tracked layers.

    Keras's `Functional.__init__`, run again on the model: there is no public way to
    change a functional model's outputs in place, and a classifier's head may come
    after it was made (from the data its `fit` reads).
    """
    from keras.src.models import functional

    functional.Functional.__init__(model, model.inputs[0], outputs, name=model.name)


def loss_tracker(model):
    """The metric `model`'s logs report as "loss" (`Trainer._loss_tracker`): a train step
    written outside Keras's own updates it as Keras's does."""
    return model._loss_tracker


def stateless_metrics_update(model, metrics_variables, loss, x, y, y_pred, sample_weight):
    """(logs, new metrics variables) after the loss tracker and compiled metrics see one
    batch, statelessly (JAX's `Trainer._update_metrics_variables`, its train step's own)."""
    return model._update_metrics_variables(metrics_variables, loss, x, y, y_pred,
                                           sample_weight)


def variable_index(optimizer, variable):
    """`variable`'s index among `optimizer`'s slots (`Optimizer._get_variable_index`, which
    Keras's own optimizers use to find a variable's momentum)."""
    return optimizer._get_variable_index(variable)


def in_save_context():
    """Whether `tf.saved_model.save` is tracing now (TensorFlow's `save_context`)."""
    from tensorflow.python.saved_model import save_context

    return save_context.in_save_context()


def in_xla_compilation():
    """Whether the graph being traced now is compiled by XLA (`jit_compile=True`).

    TensorFlow marks the graphs it traces for XLA with a control-flow context that
    the public API does not expose (`control_flow_util`).
    """
    import tensorflow as tf
    from tensorflow.python.framework import ops as framework_ops
    from tensorflow.python.ops import control_flow_util

    if tf.executing_eagerly():
        return False
    return control_flow_util.GraphOrParentsInXlaContext(framework_ops.get_default_graph())


@contextlib.contextmanager
def graph_rewrites_off(names):
    """Within the block, this thread's `tf.function` calls run with Grappler's rewrites
    `names` (RewriterConfig fields) off: the thread's function-call options
    (`eager.context`), which `tf.experimental.function_executor_type` sets the same way."""
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context

    eager = context.context()
    before = eager.function_call_options
    config = config_pb2.ConfigProto()
    if before.config_proto_serialized:
        config.ParseFromString(before.config_proto_serialized)
    for name in names:
        setattr(config.graph_options.rewrite_options, name, rewriter_config_pb2.RewriterConfig.OFF)
    eager.function_call_options = context.FunctionCallOptions(
        executor_type=before.executor_type, config_proto=config)
    try:
        yield
    finally:
        eager.function_call_options = before


class BuildFromDatasetSpec:
    """Mixed into a Keras model ahead of `keras.Model`: under a distribution strategy, `fit`
    builds the model from its dataset's element spec instead of drawing a batch.

    Keras's TensorFlow trainer (`_maybe_symbolic_build`) draws a batch to build
    the model symbolically and averages it across replicas, which fails under
    MultiWorkerMirroredStrategy (keras-team/keras#20585); the draw also starts an
    iterator, so training would begin on a reshuffled second pass. The build
    needs only shapes and dtypes: the dataset's spec (`data_adapter`).
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and data_batch is None and model_strategy(self):
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def model_strategy(model):
    """The strategy `model`'s variables were made under, or None for plain variables
    (`Model._distribute_strategy`; the public `distribute_strategy` gives the default
    strategy for none)."""
    return getattr(model, "_distribute_strategy", None)


def add_tracked_weight(layer, weight, variable_type):
    """Tracks `weight` of a `keras.layers.TFSMLayer` as a Keras variable named as Keras
    optimizers can name their slots (no ":0", no "/"): TFSMLayer's hook for its
    SavedModel's variables (`_add_existing_weight`) with `Layer._track_variable`."""
    variable = variable_type(initializer=weight, trainable=weight.trainable, dtype=weight.dtype,
                             shape=weight.shape,
                             name=weight.name.split(":")[0].replace("/", "_"))
    layer._track_variable(variable)
