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


def transformers_bit(architecture, num_classes):
    """A function making transformers' `BitForImageClassification` of `architecture`, as
    a module returning logits; None where transformers cannot be imported.

    Its default configuration computes the released code's function (symmetric
    padding, the root's constant pad before the max pool); it standardizes kernels
    by `batch_norm` over the reshaped kernel, one fused kernel where the released
    code takes several.
    """
    try:
        from transformers import BitConfig, BitForImageClassification
    except (ImportError, RuntimeError) as error:  # RuntimeError: a torchvision of another torch
        print(f"(transformers' Bit left out: {type(error).__name__}: {error})")
        return None
    channels = [int(architecture.feature_channels * share) for share in (1 / 8, 1 / 4, 1 / 2, 1)]
    config = BitConfig(embedding_size=architecture.root_channels, hidden_sizes=channels,
                       depths=list(architecture.block_units), num_labels=num_classes)

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = BitForImageClassification(config)

        def forward(self, x):
            return self.model(x).logits

    return Logits


def step_runs(architecture, num_classes, batch, size, bfloat16, device="cpu", compiled=False):
    """{label: (train, infer)}: PyTorch BiT steps in eager mode and channels_last.

    Lines: this file's `ResNetV2` ("PyTorch ...") and, where transformers is
    installed, its `BitForImageClassification` ("transformers Bit ..."), each in
    eager mode and in channels_last; with `compiled`, each under torch.compile
    too. Each line has its own model (SGD with momentum, lr 0.003)
    and random images on `device`; `bfloat16` runs them under `torch.autocast`.
    On CUDA each call waits for the GPU to finish.
    """
    torch.manual_seed(0)
    images = torch.rand(batch, 3, size, size, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    models = {"PyTorch": lambda: ResNetV2(architecture, num_classes)}
    transformers_model = transformers_bit(architecture, num_classes)
    if transformers_model is not None:
        models["transformers Bit"] = transformers_model
    variants = [(name, "eager", False) for name in models]
    variants += [(name, "channels_last", True) for name in models]
    if compiled:
        variants += [(name, "torch.compile", "compile") for name in models]
    finish = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runs = {}
    for name, label, form in variants:
        model = models[name]().to(device)
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

        runs[f"{name} {label}"] = (train, infer)
    return runs


def fastest(seconds, compiled=True):
    """The label of the fastest PyTorch line in {label: seconds}, leaving out
    torch.compile unless `compiled`."""
    return min((label for label in seconds
                if label.startswith(("PyTorch", "transformers"))
                and (compiled or "compile" not in label)), key=seconds.get)
