"""Slimmable ResNet ("Slim. Net"): equivalence with plain networks, widths, training, top-1."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mrl.baselines import (
    SlimmableLitModule,
    SlimmableResNet,
    SwitchableBatchNorm2d,
    sandwich_widths,
    slimmable_top1,
)
from mrl.core.errors import MRLError
from mrl.data import FashionMNISTDataModule
from mrl.models import Backbone


@pytest.fixture(scope="module")
def images(fmnist_pixels) -> tuple[torch.Tensor, torch.Tensor]:
    """64 real test images, normalised like the datamodule, shape (64, 1, 28, 28)."""
    _, _, x, y = fmnist_pixels
    x = torch.from_numpy(x[:64]).reshape(-1, 1, 28, 28)
    return (x - 0.2860) / 0.3530, torch.from_numpy(y[:64])


def randomise_bn(net: torch.nn.Module, seed: int = 0) -> None:
    """Different affine parameters and running statistics in every BatchNorm (and width)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def manual_forward(net: SlimmableResNet, x: torch.Tensor, mult: float) -> torch.Tensor:
    """Eval-mode logits at width ``mult`` from first principles: sliced full weights + that
    width's BatchNorm (written independently of the module's forward)."""
    i = list(net.width_mults).index(mult)

    def conv(layer, h, stride, pad):
        c_out = layer.out_channels_list[i]
        return F.conv2d(h, layer.weight[:c_out, : h.shape[1]], None, stride, pad)

    def bn(layer: SwitchableBatchNorm2d, h):
        b = layer.bn[i]
        return F.batch_norm(h, b.running_mean, b.running_var, b.weight, b.bias, False, 0.0, b.eps)

    h = F.max_pool2d(F.relu(bn(net.bn1, conv(net.conv1, x, 1, 1))), 3, 2, 1)
    for stage_idx, stage in enumerate(net.stages):
        for j, block in enumerate(stage):
            stride = 2 if stage_idx > 0 and j == 0 else 1
            out = F.relu(bn(block.bn1, conv(block.conv1, h, stride, 1)))
            out = bn(block.bn2, conv(block.conv2, out, 1, 1))
            short = h
            if block.downsample is not None:
                short = bn(block.downsample[1], conv(block.downsample[0], h, stride, 0))
            h = F.relu(out + short)
    z = h.mean(dim=(2, 3))
    assert z.shape[1] == round(mult * 8 * net.base_width)
    return F.linear(z, net.fc.weight[:, : z.shape[1]], net.fc.bias)


def test_resnet18_representation_sizes(images):
    net = SlimmableResNet()  # ResNet-18 layout, base_width 64
    assert net.representation_sizes() == {0.25: 128, 0.5: 256, 0.75: 384, 1.0: 512}
    x = images[0][:2]
    for mult, size in net.representation_sizes().items():
        net.set_width(mult)
        assert net.width_mult == mult
        assert net.embed(x).shape == (2, size) and net(x).shape == (2, 10)
    assert SlimmableResNet(base_width=8).representation_sizes() == {
        0.25: 16,
        0.5: 32,
        0.75: 48,
        1.0: 64,
    }


@torch.no_grad()
def test_full_width_equals_plain_resnet18_with_same_weights(images):
    x = images[0][:8]
    net = SlimmableResNet(base_width=64, in_chans=1, num_classes=10)
    randomise_bn(net)
    net.set_width(1.0).eval()
    # the project's own ResNet-18 backbone (timm, small-input stem) and a timm classifier
    backbone = Backbone("resnet18", in_chans=1, small_input_stem=True).eval()
    state = net.plain_state_dict(1.0)
    backbone.model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    plain = timm.create_model("resnet18", num_classes=10, in_chans=1)
    plain.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    plain.load_state_dict(state)
    plain.eval()
    torch.testing.assert_close(net.embed(x), backbone(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net(x), plain(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net(x), manual_forward(net, x, 1.0), rtol=1e-4, atol=1e-4)
    # training mode (batch statistics) too, and the running statistics move identically
    net.train()
    plain.train()
    torch.testing.assert_close(net(x), plain(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net.bn1.bn[-1].running_mean, plain.bn1.running_mean)


@torch.no_grad()
@pytest.mark.parametrize("mult", [0.25, 0.5, 0.75])
def test_smaller_widths_use_first_channels_and_own_bn(images, mult):
    x = images[0][:8]
    net = SlimmableResNet(base_width=16)
    randomise_bn(net, seed=1)
    net.set_width(mult).eval()
    logits = net(x)
    torch.testing.assert_close(logits, manual_forward(net, x, mult), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, net.to_timm(mult).eval()(x), rtol=1e-5, atol=1e-5)
    assert net.embed(x).shape == (8, round(mult * 8 * 16))


def test_switchable_bn_keeps_separate_statistics(images):
    net = SlimmableResNet(base_width=8).train()
    before = [bn.running_mean.clone() for bn in net.bn1.bn]
    with torch.no_grad():
        net.set_width(0.25)(images[0][:16])
    after = [bn.running_mean for bn in net.bn1.bn]
    assert not torch.equal(before[0], after[0])  # width 0.25's BN saw the batch
    for b, a in zip(before[1:], after[1:], strict=True):
        assert torch.equal(b, a)  # the other widths' BNs did not
    assert [bn.num_features for bn in net.bn1.bn] == [2, 4, 6, 8]


def test_bad_widths_and_config():
    with pytest.raises(MRLError, match="width mult=0.3 is not one of"):
        SlimmableResNet(base_width=8).set_width(0.3)
    with pytest.raises(MRLError, match="the largest must be 1.0"):
        SlimmableResNet(width_mults=(0.25, 0.5))
    with pytest.raises(MRLError, match="is not in \\(0, 1\\]"):
        SlimmableResNet(width_mults=(0.0, 1.0))
    with pytest.raises(MRLError, match="duplicates"):
        SlimmableResNet(width_mults=(0.5, 0.5, 1.0))
    with pytest.raises(MRLError, match="repeated representation sizes"):
        SlimmableResNet(base_width=1, width_mults=(0.01, 0.02, 1.0))
    with pytest.raises(MRLError, match="base_width=0"):
        SlimmableResNet(base_width=0)
    with pytest.raises(MRLError, match="layers="):
        SlimmableResNet(layers=())
    with pytest.raises(MRLError, match="small_input_stem="):
        SlimmableLitModule(10, 1, 28, small_input_stem="yes")
    with pytest.raises(MRLError, match="widths_per_step=1"):
        SlimmableLitModule(10, 1, 28, base_width=8, widths_per_step=1)
    with pytest.raises(MRLError, match="optim.lr"):
        SlimmableLitModule(10, 1, 28, base_width=8, optim={"lr": -1})


def test_sandwich_rule():
    four = (0.25, 0.5, 0.75, 1.0)
    assert sandwich_widths(four) == [1.0, 0.75, 0.5, 0.25]  # 4 widths: all of them
    assert sandwich_widths(four, 4) == [1.0, 0.75, 0.5, 0.25]
    many = (0.2, 0.4, 0.6, 0.8, 1.0)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        picked = sandwich_widths(many, 3, gen)
        assert len(picked) == 3 and picked[0] == 1.0 and picked[-1] == 0.2
        seen.add(picked[1])
    assert seen == {0.4, 0.6, 0.8}  # the middle one is random
    assert sandwich_widths(many, 2) == [1.0, 0.2]
    with pytest.raises(MRLError, match="sandwich"):
        sandwich_widths(many, 1)


def test_slimmable_top1_reports_only_sizes_the_widths_give(images):
    x, y = images
    net = SlimmableResNet(base_width=8)  # sizes 16, 32, 48, 64
    randomise_bn(net, seed=2)
    loader = DataLoader(TensorDataset(x, y), batch_size=24)
    net.set_width(0.75).train()
    acc = slimmable_top1(net, loader, [8, 16, 32, 48, 64, 100])
    assert net.width_mult == 0.75 and net.training  # width and mode restored
    assert list(acc) == [8, 16, 32, 48, 64, 100]
    assert acc[8] is None and acc[100] is None  # no width gives 8 or 100 features
    with torch.no_grad():
        net.eval()
        for mult, size in net.representation_sizes().items():
            manual = float((net.set_width(mult)(x).argmax(1) == y).float().mean())
            assert acc[size] == pytest.approx(manual, abs=1e-9)
    assert set(slimmable_top1(net, loader)) == {16, 32, 48, 64}
    # opt-in truncation: size 8 = first 8 features of the 16-d width and 8 classifier columns
    trunc = slimmable_top1(net, loader, [8, 16, 100], truncate=True)
    assert trunc[16] == acc[16] and trunc[100] is None
    with torch.no_grad():
        z = net.set_width(0.25).embed(x)[:, :8]
        manual8 = F.linear(z, net.fc.weight[:, :8], net.fc.bias).argmax(1)
    assert trunc[8] == pytest.approx(float((manual8 == y).float().mean()), abs=1e-9)
    with pytest.raises(MRLError, match="not a SlimmableResNet"):
        slimmable_top1(torch.nn.Linear(2, 2), loader)


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_fast_dev_run_logs_mrl_metric_names(tmp_path):
    dm = FashionMNISTDataModule(subset=64, val_size=32, test_subset=32, batch_size=16)
    module = SlimmableLitModule(dm.num_classes, dm.in_chans, dm.img_size, base_width=8)
    assert module.dims == [16, 32, 48, 64] and module.method == "Slim. Net"
    trainer = _trainer(fast_dev_run=True)
    trainer.fit(module, dm)
    logged = set(trainer.logged_metrics)
    assert {f"train/loss@d{s}" for s in module.dims} | {"train/loss_epoch"} <= logged
    assert {f"val/top1@d{s}" for s in module.dims} | {"val/top1"} <= logged
    metrics = trainer.test(module, dm, verbose=False)[0]
    expected = {f"test/top{k}@d{s}" for k in (1, 5) for s in module.dims} | {"test/top1"}
    expected |= {f"test/subnet_top1@d{s}" for s in module.subnet_sizes}
    assert set(metrics) == expected
    # the full width read whole is the same number under both names
    assert metrics["test/subnet_top1@d64"] == metrics["test/top1@d64"]
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    # the checkpoint's hyper-parameters rebuild the same network
    ckpt = tmp_path / "slim.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = SlimmableLitModule.load_from_checkpoint(ckpt).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        module.eval()
        for size, logits in module(x).items():
            torch.testing.assert_close(loaded(x)[size], logits)
    assert module.optim_cfg["weight_decay"] == 5e-4 and module.optim_cfg["momentum"] == 0.9


@pytest.mark.slow
def test_short_fit_beats_chance_at_full_width():
    pl.seed_everything(0)
    dm = FashionMNISTDataModule(
        subset=300, val_size=0, test_subset=500, batch_size=50, augment=False
    )
    module = SlimmableLitModule(dm.num_classes, dm.in_chans, dm.img_size, base_width=8)
    trainer = _trainer(max_epochs=5)
    trainer.fit(module, dm)
    assert trainer.global_step == 30
    metrics = trainer.test(module, dm, verbose=False)[0]
    assert metrics["test/top1@d64"] > 0.3, metrics  # chance is 0.1
    assert metrics["test/top1"] == metrics["test/top1@d64"]
    dm.setup("test")
    acc = slimmable_top1(module, dm.test_dataloader(), [16, 32, 48, 64, 128])
    assert acc[128] is None
    assert acc[64] == pytest.approx(metrics["test/top1@d64"], abs=1e-6)
    assert np.isfinite([acc[s] for s in (16, 32, 48)]).all()


def test_prefix_reads_are_the_full_network_sliced():
    """The paper's protocol: prefix m = the full-width representation cut to m, classified
    by the full-width classifier's first m columns (one matmul written here by hand)."""
    torch.manual_seed(0)
    module = SlimmableLitModule(10, 1, 28, base_width=8, dims=[4, 8, 16, 32, 64]).eval()
    assert module.dims == [4, 8, 16, 32, 64] and module.subnet_sizes == [16, 32, 48, 64]
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        out = module(x)
        z = module.net.set_width(1.0).embed(x).numpy().astype("float64")
        w = module.net.fc.weight.numpy().astype("float64")
        b = module.net.fc.bias.numpy().astype("float64")
        for m in module.dims:
            ref = z[:, :m] @ w[:, :m].T + b
            np.testing.assert_allclose(out[m].numpy(), ref, rtol=1e-4, atol=1e-4)
        # a prefix is not a sub-network: the 16-d width has its own channels and BN
        sub = module.subnets(x)
        assert not torch.allclose(sub[16], out[16])
        torch.testing.assert_close(sub[64], out[64])
    # the full width is always read, even when the nesting list stops short of it
    assert SlimmableLitModule(10, 1, 28, base_width=8, dims=[8, 32]).dims == [8, 32, 64]


@pytest.mark.parametrize(
    ("arch", "block", "width"), [("resnet18", "basic", 512), ("resnet50", "bottleneck", 2048)]
)
def test_arch_follows_the_timm_name(arch, block, width):
    module = SlimmableLitModule(10, 3, 64, arch=arch, stem_width=64, dims="auto")
    assert module.net.block == block and module.net.num_features == width
    assert module.subnet_sizes == [width // 4, width // 2, 3 * width // 4, width]
    plain = timm.create_model(arch, num_classes=10)
    assert [len(s) for s in module.net.stages] == [
        len(getattr(plain, f"layer{i}")) for i in (1, 2, 3, 4)
    ]
    with pytest.raises(MRLError, match="has no slimmable version"):
        SlimmableLitModule(10, 3, 64, arch="vit_small_patch16_224")


@torch.no_grad()
def test_slim_net_follows_the_experiments_model(images, tmp_path):
    """``objective=slimmable`` builds the experiment's own ResNet (blocks per stage and
    channels of ``model=``): at full width it is that timm network, weight for weight."""
    from hydra.utils import instantiate

    from mrl_test_utils import compose_cfg

    cfg = compose_cfg("train", tmp_path, "experiment=table1_fashion_mnist", "objective=slimmable")
    assert list(cfg.model.layers) == [1, 1, 1, 1] and list(cfg.model.channels)[-1] == 256
    assert cfg.model.stem_width == 32
    net = instantiate(cfg.objective)(num_classes=10, in_chans=1, img_size=28).net
    assert net.layers_cfg == (1, 1, 1, 1) and net.num_features == 256
    assert net.representation_sizes() == {0.25: 64, 0.5: 128, 0.75: 192, 1.0: 256}
    randomise_bn(net)
    net.set_width(1.0).eval()
    model = {k: v for k, v in cfg.model.items() if k != "_target_"}
    backbone = Backbone(**model, in_chans=1).eval()
    state = net.plain_state_dict(1.0)
    backbone.model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    x = images[0][:8]
    torch.testing.assert_close(net.embed(x), backbone(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(MRLError, match=r"channels=\[16, 32\] must list one width per stage"):
        SlimmableResNet(layers=[1, 1, 1, 1], channels=[16, 32])
