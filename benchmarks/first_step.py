"""Time from calling `fit` to the end of its first optimizer step, in fresh processes.

R50x1 (1000 classes) at 128x128, batch 16, float32: what every `fit` waits for
before it trains (tracing the train step, Grappler, instantiating the graph,
the first step itself), and the median of its 4th to 6th steps (the speed after).
For bitkeras as it is, the wait is broken down: from the call to the start of
the trace (data, rule, pipeline, compile), tracing `train_step`'s Python, and from
the end of the trace to the end of the first step less one later step (Grappler,
building the graph's kernels, and what a first run costs more than a later one).
A 6-step fit runs no XLA calibration (only runs of 500 steps or more measure). Each line runs in a fresh Python process, and the
lines take turns for `--rounds` rounds, so a slow spell of the machine falls on
all of them alike:

- bitkeras as it is;
- bitkeras with Grappler's graph rewrites left on during `fit` (what
  `training.without_graph_rewrites` turns off on CPUs);
- with `--baseline PATH`, the bitkeras package of another checkout (for
  example `git worktree add /tmp/base fe1b831`, the code issue 15 measured);
- PyTorch's first eager step on a fresh model (needs PyTorch, else left out).

    python benchmarks/first_step.py [--rounds 3] [--baseline /tmp/base]
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

BITKERAS_FIRST_STEP = """
import contextlib, json, sys, time
sys.path.insert(0, sys.argv[1])
import keras, numpy as np
import bitkeras
from bitkeras.finetuning import training
if sys.argv[2] == "rewrites" and hasattr(training, "without_graph_rewrites"):
    training.without_graph_rewrites = lambda strategy: contextlib.nullcontext()

class Steps(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

traced = []  # (start, end) of each run of train_step's Python: only while Keras traces it
train_step = bitkeras.BiTClassifier.train_step

def timed_train_step(self, data):
    start = time.perf_counter()
    result = train_step(self, data)
    traced.append((start, time.perf_counter()))
    return result

bitkeras.BiTClassifier.train_step = timed_train_step
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (96, 128, 128, 3)).astype(np.uint8)
labels = rng.integers(0, 1000, 96)
keras.utils.set_random_seed(0)
classifier = bitkeras.BiTClassifier(bitkeras.BiTBackbone(), num_classes=1000)
steps = Steps()
rule = dict(steps=6, crop_size=128, resize_size=128, mixup_alpha=0.0, flip=False)
start = time.perf_counter()
try:
    classifier.fit(images, labels, batch_size=16, verbose=0, callbacks=[steps], hyperrule=rule)
except TypeError:  # a checkout from before fit took the rule as one object
    classifier.fit(images, labels, batch_size=16, verbose=0, callbacks=[steps], **rule)
later = float(np.median(np.diff(steps.ends)[2:]))
print(json.dumps({"seconds": steps.ends[0] - start, "later": later,
                  "phases": {"until the trace": traced[0][0] - start,
                             "tracing train_step": traced[-1][1] - traced[0][0],
                             "graph to the step's end, less a later step":
                                 steps.ends[0] - traced[-1][1] - later,
                             "one later step": later}}))
"""

TORCH_FIRST_STEP = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
import torch.nn.functional as F
import time
from torch_bit import ResNetV2
from bitkeras.models.architecture import ARCHITECTURES
torch.manual_seed(1)
model = ResNetV2(ARCHITECTURES["R50x1"], 1000)
optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
images, labels = torch.rand(16, 3, 128, 128), torch.randint(0, 1000, (16,))
start = time.perf_counter()
optimizer.zero_grad()
F.cross_entropy(model(images), labels).backward()
optimizer.step()
print(json.dumps({"seconds": time.perf_counter() - start, "later": None}))
"""


def fresh_process(code, *arguments, path=()):
    """Runs `code` in a new interpreter; returns the JSON it prints last."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                       PYTHONPATH=os.pathsep.join([*map(str, path),
                                                   os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code, *map(str, arguments)],
                            capture_output=True, text=True, env=environment, check=False)
    if result.returncode != 0:
        raise SystemExit(f"a measuring process failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per line")
    parser.add_argument("--baseline", type=Path,
                        help="another checkout whose bitkeras package to time beside this one")
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "bitkeras").is_dir():
        raise SystemExit(f"--baseline {args.baseline}: no bitkeras package in that folder")

    lines = {"bitkeras": lambda: fresh_process(BITKERAS_FIRST_STEP, ROOT, "as is"),
             "bitkeras, Grappler rewrites on": lambda: fresh_process(
                 BITKERAS_FIRST_STEP, ROOT, "rewrites")}
    if args.baseline is not None:
        lines[f"baseline ({args.baseline})"] = lambda: fresh_process(
            BITKERAS_FIRST_STEP, args.baseline.resolve(), "as is")
    if has_torch():
        lines["PyTorch eager (fresh model)"] = lambda: fresh_process(
            TORCH_FIRST_STEP, HERE, path=[ROOT])
    seconds = {name: [] for name in lines}
    later = {name: [] for name in lines}
    breakdowns = []
    for _ in range(args.rounds):
        for name, run in lines.items():
            measured = run()
            seconds[name].append(measured["seconds"])
            later[name].append(measured["later"])
            if name == "bitkeras":
                breakdowns.append(measured.get("phases"))

    sys.path.insert(0, str(ROOT))
    from bitkeras.finetuning.xla import cpu_name

    print(f"{cpu_name()}, {os.cpu_count()} cores; R50x1 at 128x128, batch 16, float32; "
          f"seconds from calling fit to the end of its first step, {args.rounds} fresh "
          f"processes per line, interleaved")
    reference = float(np.median(seconds["bitkeras"]))
    for name, values in seconds.items():
        median = float(np.median(values))
        runs = ", ".join(f"{value:.2f}" for value in values)
        steps = ("" if later[name][0] is None else
                 f"; later steps {float(np.median(later[name])):.3f} s")
        print(f"  {name:<32} {median:6.2f} s (x{median / reference:.2f} of bitkeras; "
              f"{runs}){steps}")
    phases = [measured for measured in breakdowns if measured]
    if phases:
        print("  where bitkeras's first step goes (medians): "
              + "; ".join(f"{name} {np.median([p[name] for p in phases]):.2f} s"
                          for name in phases[0]))


if __name__ == "__main__":
    main()
