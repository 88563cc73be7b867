"""Backbone styles (pytorch / Caffe), MMDetection-layout weights, and the input normalisation each style
implies, from the data module through the checkpoint to the predictor and the export sidecar."""

import json

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from helpers import seeded_detector, store_preprocess, tiny_spec
from kldet.checkpoint import load_detector, save_detector
from kldet.cli.evaluate import checkpoint_config
from kldet.cli.export import main as export_main
from kldet.cli.train import build_datamodule, build_module
from kldet.data import DetectionDataset, read_image_folder
from kldet.datamodule import KLDetDataModule
from kldet.errors import KLDetConfigError
from kldet.inference.predictor import Predictor
from kldet.model import InputNormalization, ResNetFPN, input_normalization

pytestmark = pytest.mark.filterwarnings("ignore:resnet.* backbone starts from random weights")

# KLDET_SPEC.md section 1: BGR minus the Detectron mean, std 1; torchvision: RGB, ImageNet mean/std.
CAFFE_BGR_MEAN = np.array([102.9801, 115.9465, 122.7717])
IMAGENET_RGB_MEAN = np.array([123.675, 116.28, 103.53])
IMAGENET_RGB_STD = np.array([58.395, 57.12, 57.375])
RESNET50_BLOCKS = (3, 4, 6, 3)


def first_block_strides(model: ResNetFPN) -> list[tuple]:
    """(conv1 stride, conv2 stride, shortcut conv stride) of each stage's first bottleneck."""
    blocks = [getattr(model.body, f"layer{i}")[0] for i in range(1, 5)]
    return [(b.conv1.stride, b.conv2.stride, b.downsample[0].stride) for b in blocks]


# ---------------------------------------------------------------- stride placement


def test_caffe_style_puts_the_stride_on_the_first_1x1_conv():
    caffe = ResNetFPN("resnet50", style="caffe")
    pytorch = ResNetFPN("resnet50", style="pytorch")
    one, two = (1, 1), (2, 2)
    assert first_block_strides(caffe) == [(one, one, one)] + [(two, one, two)] * 3
    assert first_block_strides(pytorch) == [(one, one, one)] + [(one, two, two)] * 3
    # Where the resolution halves, seen from the tensors: layer2's first 1x1 conv output on a 64 px image
    # (layer2 input 16 x 16) is 8 x 8 in Caffe style, 16 x 16 in pytorch style.
    sides = {}
    for name, model in (("caffe", caffe), ("pytorch", pytorch)):
        handle = model.body.layer2[0].conv1.register_forward_hook(
            lambda module, inputs, output, name=name: sides.__setitem__(name, tuple(output.shape[-2:]))
        )
        with torch.no_grad():
            outputs = model.eval()(torch.randn(1, 3, 64, 64))
        handle.remove()
        assert [tuple(level.shape) for level in outputs] == [(1, 256, s, s) for s in (16, 8, 4, 2, 1)]
    assert sides == {"caffe": (8, 8), "pytorch": (16, 16)}


def test_caffe_style_needs_bottlenecks_and_a_known_style():
    with pytest.raises(KLDetConfigError, match="style=caffe needs a bottleneck ResNet .*resnet18"):
        ResNetFPN("resnet18", style="caffe")
    with pytest.raises(KLDetConfigError, match="style='detectron': choose one of pytorch, caffe"):
        ResNetFPN("resnet50", style="detectron")


# ---------------------------------------------------------------- MMDetection / Detectron weights


def mmdet_resnet50_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of MMDetection's resnet50_caffe file, written out
    from the ResNet-50 layout (blocks 3, 4, 6, 3; widths 64..512, expansion 4), not from torchvision."""
    generator = torch.Generator().manual_seed(seed)

    def tensor(*shape):
        return torch.rand(*shape, generator=generator) + 0.5

    def norm(prefix, channels):
        return {
            f"{prefix}.{name}": tensor(channels) for name in ("weight", "bias", "running_mean", "running_var")
        }

    state = {"conv1.weight": tensor(64, 3, 7, 7), **norm("bn1", 64)}
    inplanes = 64
    for stage, (blocks, width) in enumerate(zip(RESNET50_BLOCKS, (64, 128, 256, 512), strict=True), start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            state[f"{prefix}.conv1.weight"] = tensor(width, inplanes, 1, 1)
            state[f"{prefix}.conv2.weight"] = tensor(width, width, 3, 3)
            state[f"{prefix}.conv3.weight"] = tensor(4 * width, width, 1, 1)
            state.update({**norm(f"{prefix}.bn1", width), **norm(f"{prefix}.bn2", width)})
            state.update(norm(f"{prefix}.bn3", 4 * width))
            if block == 0:
                state[f"{prefix}.downsample.0.weight"] = tensor(4 * width, inplanes, 1, 1)
                state.update(norm(f"{prefix}.downsample.1", 4 * width))
            inplanes = 4 * width
    return state


@pytest.mark.parametrize("layout", ["plain with fc", "mmdet detector checkpoint"])
def test_mmdetection_keys_land_in_the_caffe_resnet(tmp_path, layout):
    state = mmdet_resnet50_state()
    if layout == "plain with fc":
        saved = {**state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    else:  # {"state_dict": {"backbone." + key, other parts}, "meta": ...}
        parts = {f"backbone.{key}": value for key, value in state.items()}
        saved = {
            "meta": {"epoch": 12},
            "state_dict": {**parts, "neck.fpn_convs.0.conv.weight": torch.zeros(1)},
        }
    path = tmp_path / "resnet50_caffe.pth"
    torch.save(saved, path)
    body = ResNetFPN("resnet50", weights=str(path), style="caffe").body
    assert torch.equal(body.conv1.weight, state["conv1.weight"])
    assert torch.equal(body.bn1.running_var, state["bn1.running_var"])
    assert torch.equal(body.layer3[4].conv2.weight, state["layer3.4.conv2.weight"])
    assert torch.equal(body.layer2[0].downsample[1].bias, state["layer2.0.downsample.1.bias"])
    assert torch.equal(body.layer4[2].bn3.running_mean, state["layer4.2.bn3.running_mean"])
    assert isinstance(body.layer4[2].bn3, FrozenBatchNorm2d)


def test_missing_or_extra_keys_are_one_line_naming_the_file_and_keys(tmp_path):
    state = mmdet_resnet50_state()
    missing = {key: value for key, value in state.items() if key != "layer4.2.bn3.running_var"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(KLDetConfigError) as error:
        ResNetFPN("resnet50", weights=str(tmp_path / "missing.pth"), style="caffe")
    message = str(error.value)
    assert (
        "\n" not in message
        and "missing.pth do not fit resnet50: missing 1 (layer4.2.bn3.running_var)" in message
    )
    torch.save({**state, "layer5.0.conv1.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(
        KLDetConfigError, match=r"extra.pth do not fit resnet50: unexpected 1 \(layer5.0.conv1.weight\)"
    ):
        ResNetFPN("resnet50", weights=str(tmp_path / "extra.pth"), style="caffe")
    with pytest.raises(KLDetConfigError, match="backbone weights file .*nowhere.pth does not exist"):
        ResNetFPN("resnet50", weights=str(tmp_path / "nowhere.pth"), style="caffe")


def test_mmdetection_weight_names_read_the_hub_cache_and_must_match_the_style(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    name = "open-mmlab://detectron/resnet50_caffe"
    cached = tmp_path / "hub" / "checkpoints" / "resnet50_caffe-788b5fa3.pth"
    with pytest.raises(KLDetConfigError, match="never downloads") as error:
        ResNetFPN("resnet50", weights=name, style="caffe")
    assert str(cached) in str(error.value) and "\n" not in str(error.value)
    cached.parent.mkdir(parents=True)
    state = mmdet_resnet50_state(seed=1)
    torch.save(state, cached)
    model = ResNetFPN("resnet50", weights=name, style="caffe")
    assert torch.equal(model.body.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    with pytest.raises(KLDetConfigError, match="Caffe-style resnet50: set backbone=resnet50 style=caffe"):
        ResNetFPN("resnet50", weights=name, style="pytorch")
    with pytest.raises(KLDetConfigError, match="torchvision's \\(pytorch style\\) but style=caffe"):
        ResNetFPN("resnet50", weights="IMAGENET1K_V1", style="caffe")


# ---------------------------------------------------------------- input normalisation


def test_style_normalisations_and_their_inverse():
    assert input_normalization("caffe") == InputNormalization("BGR", tuple(CAFFE_BGR_MEAN), (1.0, 1.0, 1.0))
    assert input_normalization("pytorch") == InputNormalization(
        "RGB", tuple(IMAGENET_RGB_MEAN), tuple(IMAGENET_RGB_STD)
    )
    rgb = torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1).expand(3, 2, 2)
    caffe = input_normalization("caffe")
    torch.testing.assert_close(
        caffe.normalize(rgb)[:, 0, 0],
        torch.tensor([30.0, 20.0, 10.0]) - torch.tensor(CAFFE_BGR_MEAN, dtype=torch.float32),
    )
    torch.testing.assert_close(caffe.denormalize(caffe.normalize(rgb)), rgb)
    with pytest.raises(KLDetConfigError, match="channel_order='GBR'"):
        InputNormalization("GBR")


@pytest.mark.parametrize("style", ["pytorch", "caffe"])
def test_normalisation_equals_albumentations_normalize_to_the_bit(style):
    # Training fed albumentations' Normalize output before the data pipeline used InputNormalization: the
    # same bits keep runs repeating (and validation inputs equal kldet-predict's, which uses it too).
    import albumentations as A

    normalization = input_normalization(style)
    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    rgb[0, :3] = [[0, 0, 0], [255, 255, 255], [127, 128, 129]]
    reference = A.Normalize(mean=normalization.mean, std=normalization.std, max_pixel_value=1.0, p=1.0)
    ordered = np.ascontiguousarray(rgb[..., ::-1] if normalization.channel_order == "BGR" else rgb)
    expected = torch.from_numpy(reference(image=ordered)["image"]).permute(2, 0, 1)
    got = normalization.normalize(torch.from_numpy(rgb).permute(2, 0, 1).float())
    assert got.dtype == expected.dtype == torch.float32
    assert torch.equal(got, expected)


def write_rgb_png(folder, rgb: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "a.png"), rgb[..., ::-1])  # OpenCV writes BGR


def test_datamodule_with_caffe_normalisation_serves_bgr_minus_the_mean(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    write_rgb_png(tmp_path / "images", rgb)
    data = KLDetDataModule(
        max_size=None,
        num_workers=0,
        normalization=input_normalization("caffe"),
    )
    (record,) = read_image_folder(tmp_path / "images").records
    image, _ = DetectionDataset([record], data.eval_transform)[0]
    expected = (rgb[..., ::-1] - CAFFE_BGR_MEAN).transpose(2, 0, 1)
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-4)
    default = KLDetDataModule(max_size=None, num_workers=0)
    image, _ = DetectionDataset([record], default.eval_transform)[0]
    expected = ((rgb - IMAGENET_RGB_MEAN) / IMAGENET_RGB_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-4)


def test_kldet_train_takes_the_data_normalisation_from_the_model_style(tmp_path):
    overrides = ["ckpt=unused.ckpt", "model=kldet_r50_caffe", "model.weights=null", "data.num_workers=0"]
    cfg = checkpoint_config(overrides)
    datamodule = build_datamodule(cfg)
    assert datamodule.normalization == input_normalization("caffe")
    assert (
        datamodule.eval_transform.normalization
        == datamodule.train_transform.normalization
        == input_normalization("caffe")
    )
    module = build_module(cfg, datamodule)
    assert module.hparams["model"]["style"] == "caffe"
    assert module.hparams["preprocess"]["channel_order"] == "BGR"
    assert module.hparams["preprocess"]["mean"] == list(CAFFE_BGR_MEAN)
    # kldet-eval passes the checkpoint's normalisation instead, whatever the configured model.
    checkpoint_like = build_datamodule(
        checkpoint_config(["ckpt=unused.ckpt"]), module.normalization.as_preprocess()
    )
    assert checkpoint_like.normalization == input_normalization("caffe")


TINY_CAFFE = tiny_spec(2, {"score_thresh": 0.0, "pre_nms_topk": 20}, backbone="resnet50", style="caffe")


@pytest.fixture(scope="module")
def caffe_checkpoint(tmp_path_factory):
    model = seeded_detector(TINY_CAFFE)
    preprocess = {**input_normalization("caffe").as_preprocess(), "size_divisor": 32, "max_size": 800}
    path = tmp_path_factory.mktemp("caffe") / "caffe.ckpt"
    return save_detector(path, model, TINY_CAFFE, ["a", "b"], preprocess=preprocess)


def test_predictor_feeds_a_caffe_checkpoint_bgr_minus_the_mean(caffe_checkpoint):
    predictor = Predictor.from_checkpoint(caffe_checkpoint, tile_size=64, precision="fp32")
    rgb = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    batch, sizes = predictor.preprocess([rgb])
    # Hand computation: B, G, R channels minus (102.9801, 115.9465, 122.7717), zero-padded to 64 x 64.
    expected = np.zeros((3, 64, 64))
    expected[:, :40, :50] = (rgb[..., ::-1].astype(np.float64) - CAFFE_BGR_MEAN).transpose(2, 0, 1)
    assert sizes == [(40, 50)]
    np.testing.assert_allclose(batch[0].numpy(), expected, atol=1e-4)
    ours = predictor.predict_image(rgb)
    (reference,) = predictor.model.predict(torch.from_numpy(expected).float()[None], image_sizes=[(40, 50)])
    torch.testing.assert_close(ours["scores"], reference["scores"], atol=1e-5, rtol=0)


def test_checkpoints_without_channel_order_read_as_their_style(tmp_path, caffe_checkpoint):
    torch.manual_seed(0)
    tiny = tiny_spec(1, channels=8)
    # Written before channel_order existed: pytorch style, mean/std only -> RGB with those values.
    old = store_preprocess(
        save_detector(tmp_path / "old.ckpt", seeded_detector(tiny), tiny, ["a"]),
        {"mean": [1, 2, 3], "std": [4, 5, 6]},
    )
    _, meta = load_detector(old)
    assert (meta["preprocess"]["channel_order"], meta["preprocess"]["mean"]) == ("RGB", [1.0, 2.0, 3.0])
    assert Predictor.from_checkpoint(old).normalization == InputNormalization("RGB", (1, 2, 3), (4, 5, 6))
    # A Caffe-style model saved without any preprocess: its style's normalisation.
    model, _ = load_detector(caffe_checkpoint)
    bare = save_detector(tmp_path / "bare.ckpt", model, TINY_CAFFE, ["a", "b"])
    assert Predictor.from_checkpoint(bare).normalization == input_normalization("caffe")


def test_export_sidecar_states_the_channel_order(tmp_path):
    # The stored normalisation is what inference repeats; a small network keeps the export fast.
    torch.manual_seed(0)
    tiny = tiny_spec(1, channels=8)
    preprocess = {**input_normalization("caffe").as_preprocess(), "max_size": None}
    checkpoint = save_detector(
        tmp_path / "bgr.ckpt", seeded_detector(tiny), tiny, ["a"], preprocess=preprocess
    )
    out = tmp_path / "m.ts"
    assert export_main([f"ckpt={checkpoint}", "format=torchscript", f"out={out}", "image_size=96"]) == 0
    sidecar = json.loads((tmp_path / "m.ts.json").read_text())["input"]
    assert (sidecar["channel_order"], sidecar["mean"], sidecar["std"]) == (
        "BGR",
        list(CAFFE_BGR_MEAN),
        [1.0, 1.0, 1.0],
    )
    assert "BGR" in sidecar["layout"]
