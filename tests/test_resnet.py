"""CIFAR ResNets: exact parameter counts, and logits / running statistics equal to a PyTorch
re-statement of He et al.'s basic-block ResNet (written here from the paper, both shortcuts)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from vit_jax import models
from vit_jax.models.resnet import ResNet


@pytest.mark.parametrize("name,size,channels,count", [
    ("resnet20_cifar", 32, 3, 269_722),     # He et al. Table 6: 0.27M
    ("resnet56_cifar", 32, 3, 853_018),     # 0.85M
    ("resnet18_cifar", 32, 3, 11_173_962),  # the CIFAR ResNet-18 (3x3 stem, no max-pool)
])
def test_param_counts(name, size, channels, count):
    assert models.param_count(models.create(name), (1, size, size, channels)) == count


class TorchBlock(tnn.Module):
    def __init__(self, cin, cout, stride, shortcut):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.stride, self.cin, self.cout, self.shortcut = stride, cin, cout, shortcut
        self.proj = None
        if (stride != 1 or cin != cout) and shortcut == "B":
            self.proj = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.stride != 1 or self.cin != self.cout:
            if self.proj is not None:
                x = self.proj(x)
            else:
                x = x[:, :, ::self.stride, ::self.stride]
                extra = self.cout - self.cin
                x = tnn.functional.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return torch.relu(y + x)


class TorchResNet(tnn.Module):
    def __init__(self, depths, widths, shortcut, in_channels, num_classes):
        super().__init__()
        self.stem = tnn.Sequential(tnn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                   tnn.BatchNorm2d(widths[0]), tnn.ReLU())
        blocks, cin = [], widths[0]
        for i, (d, w) in enumerate(zip(depths, widths)):
            for j in range(d):
                blocks.append(TorchBlock(cin, w, 2 if (i > 0 and j == 0) else 1, shortcut))
                cin = w
        self.blocks = tnn.Sequential(*blocks)
        self.head = tnn.Linear(cin, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def _conv(w):   # flax (kh, kw, in, out) -> torch (out, in, kh, kw)
    return torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy())


def _bn(tbn, p, s):
    tbn.weight.data = torch.from_numpy(np.asarray(p["scale"]).copy())
    tbn.bias.data = torch.from_numpy(np.asarray(p["bias"]).copy())
    tbn.running_mean.data = torch.from_numpy(np.asarray(s["mean"]).copy())
    tbn.running_var.data = torch.from_numpy(np.asarray(s["var"]).copy())


def _to_torch(variables, depths, widths, shortcut, in_channels, num_classes):
    t = TorchResNet(depths, widths, shortcut, in_channels, num_classes)
    p, s = variables["params"], variables["batch_stats"]
    t.stem[0].weight.data = _conv(p["stem_conv"]["kernel"])
    _bn(t.stem[1], p["stem_bn"], s["stem_bn"])
    k = 0
    for i, d in enumerate(depths):
        for j in range(d):
            name, blk = f"stage_{i}_block_{j}", t.blocks[k]
            blk.conv1.weight.data = _conv(p[name]["conv1"]["kernel"])
            blk.conv2.weight.data = _conv(p[name]["conv2"]["kernel"])
            _bn(blk.bn1, p[name]["bn1"], s[name]["bn1"])
            _bn(blk.bn2, p[name]["bn2"], s[name]["bn2"])
            if blk.proj is not None:
                blk.proj[0].weight.data = _conv(p[name]["proj_conv"]["kernel"])
                _bn(blk.proj[1], p[name]["proj_bn"], s[name]["proj_bn"])
            k += 1
    t.head.weight.data = torch.from_numpy(np.asarray(p["head"]["kernel"]).T.copy())
    t.head.bias.data = torch.from_numpy(np.asarray(p["head"]["bias"]).copy())
    return t


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_matches_torch_restatement(shortcut):
    depths, widths, cin, nc = (1, 2), (4, 8), 2, 5
    model = ResNet(depths=depths, widths=widths, stem_width=4, shortcut=shortcut, in_channels=cin,
                   num_classes=nc)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, cin))
    variables = model.init(jax.random.PRNGKey(1), x)
    # non-trivial BN parameters and statistics, so a swapped scale / mean cannot pass
    variables = jax.tree.map(lambda a: a + 0.1 * jax.random.uniform(jax.random.PRNGKey(a.size), a.shape),
                             variables)
    t = _to_torch(variables, depths, widths, shortcut, cin, nc).double()
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).double()

    t.eval()
    out, aux = model.apply(variables, x)
    np.testing.assert_allclose(np.asarray(out), t(xt).detach().numpy(), atol=1e-4, rtol=1e-4)
    assert aux["encoded"].shape == (3, 4 * 4, 8) and aux["pre_logits"].shape == (3, 8)

    t.train()   # batch statistics, and torch's running-average update (unbiased variance)
    (out, _), new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(out), t(xt).detach().numpy(), atol=1e-4, rtol=1e-4)
    last = "stage_1_block_1"
    np.testing.assert_allclose(np.asarray(new["batch_stats"][last]["bn2"]["var"]),
                               t.blocks[-1].bn2.running_var.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new["batch_stats"][last]["bn2"]["mean"]),
                               t.blocks[-1].bn2.running_mean.numpy(), atol=1e-5, rtol=1e-5)


def test_shortcut_a_is_parameter_free_and_differs_from_b():
    x = jnp.ones((1, 8, 8, 3))
    a = ResNet(depths=(1, 1), widths=(4, 8), stem_width=4, shortcut="A")
    b = a.clone(shortcut="B")
    pa = jax.eval_shape(a.init, jax.random.PRNGKey(0), x)["params"]
    pb = jax.eval_shape(b.init, jax.random.PRNGKey(0), x)["params"]
    assert "proj_conv" not in pa["stage_1_block_0"] and "proj_conv" in pb["stage_1_block_0"]


def test_features_when_no_classes():
    m = models.create("resnet_mnist", num_classes=0)
    x = jnp.zeros((2, 28, 28, 1))
    out, aux = m.apply(m.init(jax.random.PRNGKey(0), x), x)
    assert out.shape == (2, 128) and aux["encoded"].shape == (2, 7 * 7, 128)


def test_bad_input_and_fields():
    m = models.create("resnet20_cifar")
    with pytest.raises(ValueError, match="channels"):
        m.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match="shortcut"):
        ResNet(shortcut="C")
    with pytest.raises(ValueError, match="equal length"):
        ResNet(depths=(1, 1), widths=(4,))
