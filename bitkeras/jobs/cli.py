"""The `bitkeras` command: `bitkeras pretrain ...`, `bitkeras finetune ...`, `bitkeras detect ...`,
`bitkeras distill ...`.

    bitkeras finetune                 # the shipped model on the bundled digits
    bitkeras finetune --data flowers/ --model BiT-M-R50x1 --out runs/flowers
    bitkeras pretrain --out runs/glyphs --examples 60000 --epochs 16
    bitkeras pretrain --model BiT-M-R50x1 --data photos/ --out runs/photos --image-size 128
    bitkeras detect                   # RetinaNet on the shipped model, rendered scenes
    bitkeras distill                  # the shipped model, fine-tuned, into a small student

Run `bitkeras COMMAND --help` for every option.
"""

import argparse
import contextlib
import os
from importlib import metadata
import shlex
import shutil
import signal
import sys
import threading

from bitkeras import files

USER_ERRORS = (ValueError, OSError, RuntimeError, ArithmeticError)
"""What bad input, missing files and failed runs raise: one line, exit status 2."""


def main(argv=None):
    """The console script: runs the command and returns its exit status.

    0: done. 2: a user error (bad argument, missing or damaged file, data
    that cannot be used, a run that failed), said in one line on standard
    error. 130: interrupted (Ctrl-C), with the command that resumes where a
    checkpoint exists. An output folder the run created and left empty is
    removed. With BITKERAS_TRACEBACK=1 in the environment, errors keep their
    traceback (for bug reports).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    out = _option(argv, "--out")
    existed = out is not None and os.path.exists(out)
    try:
        with interrupt_deadline():
            run(argv)
        return 0
    except KeyboardInterrupt:
        print(f"bitkeras: interrupted.{_resume_hint(argv, out)}", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if os.environ.get("BITKERAS_TRACEBACK"):
            raise
        print(f"bitkeras: error: {error}".replace("\n", " "), file=sys.stderr)
        return 2
    finally:
        if out is not None and not existed:
            _remove_if_empty(out)


INTERRUPT_GRACE_SECONDS = 10
"""How long a command has, after Ctrl-C, to stop as Python stops it before it is ended."""


@contextlib.contextmanager
def interrupt_deadline(grace=INTERRUPT_GRACE_SECONDS):
    """Within the block, Ctrl-C ends the command within `grace` seconds, whatever it is doing.

    Python raises KeyboardInterrupt only between bytecodes, so a long call into C++ (XLA
    compiling a step, say) holds Ctrl-C back until it returns. Here the signal also
    wakes a thread of its own at once (`signal.set_wakeup_fd`, written by the C-level
    handler in whichever thread the signal reaches); if the command has not ended
    `grace` seconds later, that thread says so and exits the process with status 130.
    Outside the main thread Python's own handling stays.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    ended = threading.Event()

    def watch():
        while os.read(read, 1) and not ended.is_set():  # a signal's number, or the end
            if not ended.wait(grace):
                print(f"bitkeras: interrupted (ended {grace} s after Ctrl-C, in a call that "
                      f"Python could not interrupt).", file=sys.stderr, flush=True)
                os._exit(130)

    watcher = threading.Thread(target=watch, name="bitkeras-interrupts", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        ended.set()
        signal.set_wakeup_fd(previous)
        os.write(write, b"\0")  # wakes the watcher, to end
        watcher.join()
        os.close(read)
        os.close(write)


def quiet_tensorflow():
    """Loads TensorFlow and probes its devices without the C++ start-up lines it writes to
    standard error (CUDA probes, CPU features, oneDNN): noise in a command's output.

    Standard error is closed at the file-descriptor level for the while, since those
    lines come from C++ logging that TF_CPP_MIN_LOG_LEVEL does not reach in TensorFlow
    2.21. Where the user set TF_CPP_MIN_LOG_LEVEL, TensorFlow loads as usual, lines and
    all; where it is already loaded, nothing happens.
    """
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow as tf

            # Physical devices only: the CUDA probe, without starting TensorFlow's runtime,
            # which a multi-worker or TPU strategy must be made before.
            tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _option(argv, name):
    """The value of option `name` in `argv` (either spelling), or None."""
    for index, argument in enumerate(argv):
        if argument == name and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith(name + "="):
            return argument.split("=", 1)[1]
    return None


def _resume_hint(argv, out):
    from bitkeras.finetuning import run_state

    if argv[:1] == ["pretrain"] and out is not None and os.path.exists(
            os.path.join(out, "checkpoints", run_state.CHECKPOINT_FILE)):
        return f" Resume from the last checkpoint with: {shlex.join(['bitkeras', *argv])}"
    return ""


def _remove_if_empty(folder):
    """Removes `folder` if it holds nothing but empty folders."""
    for root, _, names in os.walk(folder):
        if names:
            return
    shutil.rmtree(folder, ignore_errors=True)


def run(argv):
    """Runs `bitkeras ARGV...` and returns the command's result (a report or record dict)."""
    argv = list(argv)
    parser = argparse.ArgumentParser(
        prog="bitkeras", description="Big Transfer (BiT) for Keras: pre-train and fine-tune.")
    parser.add_argument("--version", action="version",
                        version=f"bitkeras {metadata.version('bitkeras')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _pretrain_parser(commands.add_parser(
        "pretrain", help="pre-train a BiT model upstream with BiT's recipe",
        description="Pre-trains a BiT model with BiT's upstream recipe on the generated glyphs "
                    "dataset (bitkeras.data.glyphs) or your own images (--data), from scratch "
                    "or continuing a released or shipped model (--model); checkpoints, and "
                    "resumes when rerun."))
    _finetune_parser(commands.add_parser(
        "finetune", help="fine-tune with the BiT-HyperRule and write a transfer report",
        description="Fine-tunes a pretrained model with the BiT-HyperRule next to the same "
                    "architecture trained from scratch, and writes the fine-tuned model, "
                    "report.json and report.png."))
    _detect_parser(commands.add_parser(
        "detect", help="fine-tune RetinaNet on a BiT backbone and write a detection report",
        description="Fine-tunes keras-hub's RetinaNet on a pretrained BiT backbone next to the "
                    "same detector from scratch, scores both with COCO AP (pycocotools), and "
                    "writes report.json, report.png, detector.keras and a bytes-serving "
                    "SavedModel. Default: rendered scenes, a CPU budget of a few minutes."))
    _distill_parser(commands.add_parser(
        "distill", help="distil a BiT teacher into a small student and write a report",
        description="Distils a teacher (default: the shipped model fine-tuned on the bundled "
                    "digits) into a small student from scratch, next to the same student "
                    "trained on the labels alone: the four teaching modes of \"A good teacher "
                    "is patient and consistent\" at one budget, and function matching at "
                    "several schedule lengths. Writes distilled.keras, report.json and "
                    "report.png. --recipe runs one of the paper's recipes on its data."))
    _experiment_parser(commands.add_parser(
        "experiment", help="rerun a ResNet or BiT paper experiment offline",
        description="degradation: plain vs residual CIFAR networks of two depths on the "
                    "generated glyphs (training-error curves, layer responses). normalization: "
                    "BatchNorm vs GroupNorm vs GroupNorm + WS pre-trained at a small batch, then "
                    "transferred to the bundled digits. Each writes report.json and report.png; "
                    "the defaults take minutes on 2 CPU cores."))
    args = parser.parse_args(argv)
    if getattr(args, "out", None):
        files.check_output_folder(args.out)  # before any work that an unwritable --out would lose
    quiet_tensorflow()
    args.command_line = shlex.join(["bitkeras", *argv])
    if args.command == "pretrain":
        from bitkeras.jobs import pretrain_job

        return pretrain_job.run(args)
    if args.command == "detect":
        from bitkeras.jobs import detection_job

        return detection_job.run(args)
    if args.command == "distill":
        from bitkeras.jobs import distill_job

        return distill_job.run(args)
    if args.command == "experiment":
        from bitkeras.jobs import experiments

        return experiments.run(args)
    from bitkeras.jobs import transfer

    return transfer.run(args)


def _pretrain_parser(parser):
    from bitkeras.data import glyphs

    parser.add_argument("--out", required=True, help="folder for model.npz, upstream.json, "
                        "MODEL_CARD.md and (while running) checkpoints/")
    parser.add_argument("--model", default=None,
                        help="continue pre-training this model (a preset with weights such as "
                        "BiT-M-R50x1 or BiT-Glyphs-R14x0.5, a .npz or .safetensors file, a "
                        "folder, hf://...; a new head for the data's classes); default: a new "
                        "model of --block-units and --width-factor")
    parser.add_argument("--data", default=None,
                        help="pre-train on these images: a folder of class sub-folders, "
                        "tfds:NAME[:SPLIT], or a CSV of `path,labels` rows (labels separated "
                        "by spaces); default: the generated glyphs")
    parser.add_argument("--multi-label", action="store_true",
                        help="the CSV's rows may have several labels: sigmoid cross-entropy "
                        "per class instead of softmax")
    parser.add_argument("--examples", type=int, default=None,
                        help=f"generated glyph images (default: {glyphs.DEFAULT_EXAMPLES}; "
                        "not with --data)")
    parser.add_argument("--image-size", type=int, default=32,
                        help="side the images are generated or resized to, and of the crops "
                        "(default: %(default)s)")
    parser.add_argument("--epochs", type=float, default=16, help="passes over the data; the "
                        "recipe's decays fall at 30/60/80 of 90 of them (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--block-units", type=int, nargs=4, default=None, metavar="N",
                        help="units in block1..block4 of a new model (default: 1 1 1 1; "
                        "not with --model)")
    parser.add_argument("--width-factor", type=float, default=None,
                        help="width of a new model (default: 0.5; not with --model)")
    parser.add_argument("--seed", type=int, default=0, help="data, initialisation and order")
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="no random flips (mirroring changes letters)")
    parser.add_argument("--eval-examples", type=int, default=12_200,
                        help="fresh glyphs (another seed) the upstream accuracy is measured on "
                        "(glyph runs only)")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="steps between checkpoints (default: 20 per run)")
    parser.add_argument("--jit-compile", action="store_true",
                        help="compile steps with XLA (default: on GPUs and TPUs only)")
    _hardware_arguments(parser)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))


def _hardware_arguments(parser):
    from bitkeras.checks import PRECISIONS, STRATEGY_NAMES

    parser.add_argument("--strategy", default="auto", choices=STRATEGY_NAMES,
                        help="tf.distribute strategy; auto: TPU, several workers (TF_CONFIG), "
                             "several GPUs, else one device (default: %(default)s)")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="compute precision (default: %(default)s)")


DEFAULT_MODEL = "BiT-Glyphs-R14x0.5"
"""The model `bitkeras finetune` starts from: pre-trained by bitkeras, shipped in saved_models/."""


def _finetune_parser(parser):
    parser.add_argument("--data", default=None,
                        help="a folder of class sub-folders, or 'tfds:NAME[:VERSION]' "
                             "(default: the UCI handwritten digits scikit-learn bundles)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="a preset name, a .npz checkpoint, a .keras file, or a TF-Hub "
                             "BiT module (URL or SavedModel folder) (default: %(default)s, "
                             "shipped in saved_models/)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: saved_models/finetuned-<data> in the "
                             "working folder)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps "
                        "(default: the HyperRule's; the bundled-digits job uses a CPU budget)")
    _rule_arguments(parser)
    parser.add_argument("--no-flip", dest="flip", action="store_false", default=None,
                        help="no random flips (for data mirroring would change)")
    parser.add_argument("--few-shot", type=int, nargs="*", default=[1, 5, 10],
                        metavar="K", help="examples per class of the few-shot table "
                                          "(default: 1 5 10; none to skip)")
    parser.add_argument("--few-shot-steps", type=int, default=None,
                        help="steps of each few-shot fit (default: the HyperRule's; 100 in the "
                             "bundled-digits CPU budget)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="few-shot draws per K (default: %(default)s)")
    parser.add_argument("--evaluations", type=int, default=10,
                        help="points on the learning curves (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    _hardware_arguments(parser)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))


def _rule_arguments(parser):
    """The HyperRule's sizes a job's options change, and the test split of data without one."""
    parser.add_argument("--batch-size", type=_positive_int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="base learning rate (default: the HyperRule's for the batch size)")
    parser.add_argument("--resize-size", type=_positive_int, default=None)
    parser.add_argument("--crop-size", type=_positive_int, default=None)
    parser.add_argument("--test-fraction", type=float, default=0.25,
                        help="held-out share of a dataset with no test split (default: "
                             "%(default)s)")


def _distill_parser(parser):
    from bitkeras.finetuning.distill_recipes import MODES, PAPER_RECIPES

    parser.add_argument("--data", default=None,
                        help="a folder of class sub-folders, or 'tfds:NAME' (default: the UCI "
                             "handwritten digits scikit-learn bundles)")
    parser.add_argument("--teacher", default=None,
                        help="the teacher: a .keras file, a TF-Hub module or a preset with a "
                             "head for the data's classes (default: the shipped "
                             "BiT-Glyphs-R14x0.5 fine-tuned on the data in the job)")
    parser.add_argument("--student", default="R14x0.25",
                        help="the student's network, from scratch: a preset of the ResNet family "
                             "(ResNet20-CIFAR, R50x1, ...) or a BiT layout RDEPTHxWIDTH with a "
                             "width BiT's releases lack, e.g. R14x0.25 (default: %(default)s)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: saved_models/distilled-<data>)")
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help="the budget: steps of each student run and of the teacher's "
                             "fine-tuning (default: the HyperRule's; 300 for the bundled digits)")
    parser.add_argument("--patience", type=_positive_int, nargs="*", default=None,
                        metavar="STEPS", help="schedule lengths of the patience curve, function "
                        "matching (default: 100 300 900; the budget's is added)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="teaching modes compared at the budget (default: all four)")
    parser.add_argument("--temperature", type=float, default=1.0, help="default: %(default)s")
    _rule_arguments(parser)
    parser.add_argument("--evaluations", type=_positive_int, default=6,
                        help="points on each learning curve (default: %(default)s)")
    parser.add_argument("--recipe", choices=list(PAPER_RECIPES), default=None, metavar="NAME",
                        help="run one of the paper's recipes on its data instead: "
                             + ", ".join(PAPER_RECIPES))
    parser.add_argument("--seed", type=int, default=0)


def _experiment_parser(parser):
    parser.add_argument("experiment", choices=("degradation", "normalization"))
    parser.add_argument("--out", required=True, help="folder for report.json and report.png")
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help="training (upstream) steps (default: 400 degradation, 300 "
                             "normalization)")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="training batch (default: 64 degradation, 32 normalization)")
    parser.add_argument("--device-batch-size", type=_positive_int, default=4,
                        help="normalization: images per simulated device, what BatchNorm "
                             "normalizes over (default: %(default)s)")
    parser.add_argument("--examples", type=_positive_int, default=None,
                        help="generated glyph images to train on (default: 2560)")
    parser.add_argument("--classes", choices=("forms", "all"), default="forms",
                        help="glyph classes: the 24 shapes and textures (default), or all 132")
    parser.add_argument("--depths", type=_positive_int, nargs=2, default=(20, 56),
                        metavar=("SHALLOW", "DEEP"),
                        help="degradation: the two CIFAR depths, 6n + 2 (default: 20 56)")
    parser.add_argument("--width-factor", type=float, default=None,
                        help="channel multiplier (default: 0.5 degradation, 2 normalization)")
    parser.add_argument("--transfer-steps", type=_positive_int, default=300,
                        help="normalization: HyperRule fine-tuning steps on the digits")
    parser.add_argument("--seed", type=int, default=0)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _detect_parser(parser):
    parser.add_argument("--data", default=None,
                        help="COCO JSON (the file, or a folder holding it and the images), or "
                             "'tfds:NAME[:SPLIT]' such as tfds:voc/2007 or tfds:coco/2017 "
                             "(default: scenes rendered by bitkeras)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="the backbone: a preset name, hf:// handle or weights file "
                             "(default: %(default)s, shipped in saved_models/)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: saved_models/detection)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: the detection rule's 30 epochs; 240 on "
                             "the rendered scenes)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 256 as the BiT paper's COCO run (8 on rendered scenes)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="learning rate at batch 256 (default: the paper's 0.08), scaled "
                             "to the batch size")
    parser.add_argument("--image-size", type=int, default=None,
                        help="letterbox side, a multiple of 128 (default: from the data, "
                             "1024 for images of 640 px and more)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="use (or render) this many training images")
    parser.add_argument("--test-images", type=int, default=None,
                        help="use (or render) this many held-out images")
    parser.add_argument("--test-split", default="validation",
                        help="TFDS split to score on (default: %(default)s)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="held-out share of a COCO JSON set (default: %(default)s)")
    parser.add_argument("--evaluations", type=int, default=4,
                        help="points on the AP curves (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))


if __name__ == "__main__":
    main()
