"""bitkeras's R50x1 against a PyTorch BiT R50x1 on this machine, in one run.

The PyTorch model follows the released PyTorch BiT definition: weight-
standardized convolutions (population variance, epsilon 1e-10), GroupNorm with
32 groups and epsilon 1e-5, pre-activation bottlenecks with the stride on the
3x3 convolution, a 1000-class head. Both models run R50x1 at 128x128, batch 16:
a training step with SGD momentum and inference. MFU is given against both
libraries' float32 matmul (2048x2048), measured here in the same run.

Needs PyTorch (`pip install torch`), which bitkeras itself does not use:

    python benchmarks/pytorch_reference.py [--steps 10]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from throughput import (  # noqa: E402  (this script's folder is on sys.path)
    matmul_flops_per_second,
    median_seconds,
    model_images_per_second,
)

import bitkeras  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("benchmarks/pytorch_reference.py needs PyTorch: pip install torch")


class StandardizedConv(nn.Conv2d):
    def forward(self, x):
        variance, mean = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True,
                                        unbiased=False)
        weight = (self.weight - mean) / torch.sqrt(variance + 1e-10)
        return F.conv2d(x, weight, None, self.stride, self.padding)


class Bottleneck(nn.Module):
    def __init__(self, in_channels, mid_channels, out_channels, stride):
        super().__init__()
        self.norm_a = nn.GroupNorm(32, in_channels, eps=1e-5)
        self.conv_a = StandardizedConv(in_channels, mid_channels, 1, bias=False)
        self.norm_b = nn.GroupNorm(32, mid_channels, eps=1e-5)
        self.conv_b = StandardizedConv(mid_channels, mid_channels, 3, stride, 1, bias=False)
        self.norm_c = nn.GroupNorm(32, mid_channels, eps=1e-5)
        self.conv_c = StandardizedConv(mid_channels, out_channels, 1, bias=False)
        self.projection = (
            StandardizedConv(in_channels, out_channels, 1, stride, bias=False)
            if stride != 1 or in_channels != out_channels else None
        )

    def forward(self, x):
        preactivated = F.relu(self.norm_a(x))
        shortcut = x if self.projection is None else self.projection(preactivated)
        hidden = self.conv_a(preactivated)
        hidden = self.conv_b(F.relu(self.norm_b(hidden)))
        hidden = self.conv_c(F.relu(self.norm_c(hidden)))
        return hidden + shortcut


class ResNetV2(nn.Module):
    def __init__(self, architecture, num_classes):
        super().__init__()
        self.root = StandardizedConv(3, architecture.root_channels, 7, 2, 3, bias=False)
        self.units = nn.Sequential(*[
            Bottleneck(cin, mid, out, stride)
            for _, _, cin, mid, out, stride, _ in architecture.units()
        ])
        self.norm = nn.GroupNorm(32, architecture.feature_channels, eps=1e-5)
        self.head = nn.Linear(architecture.feature_channels, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.pad(self.root(x), (1, 1, 1, 1)), 3, 2)
        x = F.relu(self.norm(self.units(x)))
        return self.head(x.mean(dim=(2, 3)))


def torch_images_per_second(architecture, batch, size, num_classes, steps):
    torch.manual_seed(0)
    model = ResNetV2(architecture, num_classes)
    images = torch.rand(batch, 3, size, size)
    labels = torch.randint(0, num_classes, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)

    def train_step():
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    model.train()
    train = median_seconds(train_step, steps)
    model.eval()
    with torch.no_grad():
        infer = median_seconds(lambda: model(images), steps)
    return batch / train, batch / infer


def torch_matmul_flops_per_second(size, steps):
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / median_seconds(lambda: a @ b, steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    args = parser.parse_args()
    size, batch, num_classes = 128, 16, 1000
    architecture = bitkeras.ARCHITECTURES["R50x1"]
    forward_flops = 2 * architecture.multiply_adds(size, num_classes)

    ceilings = {
        "TensorFlow": matmul_flops_per_second(2048, args.steps * 4),
        "PyTorch": torch_matmul_flops_per_second(2048, args.steps * 4),
    }
    print(f"threads: TensorFlow {tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}"
          f", PyTorch {torch.get_num_threads()} (cpus {os.cpu_count()}); torch {torch.__version__}")
    for name, ceiling in ceilings.items():
        print(f"matmul 2048x2048 float32, {name}: {ceiling / 1e9:.1f} GFLOP/s")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, batch)
    measured = {
        "PyTorch BiT": torch_images_per_second(architecture, batch, size, num_classes,
                                               args.steps),
        "bitkeras, XLA off": model_images_per_second(False, images, labels, args.steps,
                                                     num_classes),
    }
    reference = measured["PyTorch BiT"]
    for label, (train, infer) in measured.items():
        mfu = ", ".join(
            f"vs {name} matmul {3 * forward_flops * train / ceiling:.2f} / "
            f"{forward_flops * infer / ceiling:.2f}"
            for name, ceiling in ceilings.items()
        )
        print(f"  {label:<18} train {train:5.1f} images/s, inference {infer:5.1f} images/s "
              f"[x{train / reference[0]:.2f} / x{infer / reference[1]:.2f} vs PyTorch]; "
              f"MFU train / inference {mfu}")


if __name__ == "__main__":
    main()
