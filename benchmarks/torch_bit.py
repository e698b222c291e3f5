"""PyTorch BiT ResNet-v2, as the released PyTorch BiT code defines it, for the benchmarks.

Weight-standardized convolutions (population variance, epsilon 1e-10),
GroupNorm with 32 groups and epsilon 1e-5, pre-activation bottlenecks with
the stride on the 3x3 convolution, a linear head on the global average.
`architecture` is a `bitkeras.Architecture` (or anything with its `units()`,
`root_channels` and `feature_channels`).
"""

import torch
import torch.nn.functional as F
from torch import nn


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


def step_runs(architecture, num_classes, batch, size, bfloat16, device="cpu", compiled=False):
    """{label: (train, infer)}: PyTorch eager, channels_last (and torch.compile) steps.

    Each line has its own model (SGD with momentum, lr 0.003) and random
    images on `device`; `bfloat16` runs them under `torch.autocast`. On CUDA
    each call waits for the GPU to finish.
    """
    torch.manual_seed(0)
    images = torch.rand(batch, 3, size, size, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    variants = {"eager": False, "channels_last": True}
    if compiled:
        variants["torch.compile"] = "compile"
    finish = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runs = {}
    for label, form in variants.items():
        model = ResNetV2(architecture, num_classes).to(device)
        inputs = images
        if form is True:
            model = model.to(memory_format=torch.channels_last)
            inputs = images.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
        forward = torch.compile(model) if form == "compile" else model

        def train(forward=forward, optimizer=optimizer, inputs=inputs):
            optimizer.zero_grad()
            with torch.autocast(device, torch.bfloat16, enabled=bfloat16):
                loss = F.cross_entropy(forward(inputs), labels)
            loss.backward()
            optimizer.step()
            finish()

        def infer(forward=forward, inputs=inputs):
            with torch.no_grad(), torch.autocast(device, torch.bfloat16, enabled=bfloat16):
                forward(inputs)
            finish()

        runs[f"PyTorch {label}"] = (train, infer)
    return runs
