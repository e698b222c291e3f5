import pytest

from bitkeras import list_presets
from bitkeras.io.presets import BUCKET_URL, get_preset


def test_released_names_and_files():
    names = list_presets()
    for architecture in ("R50x1", "R50x3", "R101x1", "R101x3", "R152x2", "R152x4"):
        assert architecture in names
        for released in (f"BiT-S-{architecture}", f"BiT-M-{architecture}",
                         f"BiT-M-{architecture}-ILSVRC2012"):
            assert get_preset(released).url == f"{BUCKET_URL}{released}.npz"
    assert get_preset("BiT-M-R50x1-distilled-224").url == BUCKET_URL + "distill/R50x1_224.npz"
    assert get_preset("R101x3").weights_file is None


def test_file_names_are_aliases():
    assert get_preset("BiT-M-R152x2.npz").name == "BiT-M-R152x2"
    assert get_preset("distill/R50x1_160").name == "BiT-M-R50x1-distilled-160"


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'BiT-M-R50X1'.*'BiT-M-R50x1'"):
        get_preset("BiT-M-R50X1")


def test_the_table_records_each_models_training_resolution():
    assert get_preset("BiT-M-R152x4").resolution == 224
    assert get_preset("BiT-S-R50x3").resolution == 224
    assert get_preset("BiT-M-R101x1-ILSVRC2012").resolution == 480
    assert get_preset("BiT-M-R50x1-distilled-160").resolution == 160
    assert get_preset("BiT-Glyphs-R14x0.5").resolution == 32
    assert get_preset("R50x1").resolution is None and get_preset("R50x1").url is None
    family = 4 + 2 * 3 + 2 * 6  # ResNet/Plain 18 and 34, 50..152 and V2, CIFAR and plain
    assert get_preset("BiT-M-R152x2-distill-teacher-384").resolution == 384
    assert get_preset("BiT-M-R152x2-distill-teacher-pet-128").resolution == 128
    assert len(list_presets()) == 6 + 3 * 6 + 2 + 6 + 1 + family
    assert list_presets()[-family:][:2] == ["ResNet18", "Plain18"]  # the family comes last
    assert get_preset("ResNet50").resolution == 224  # keras.applications' heads
    assert get_preset("ResNet50").architecture is None
    assert get_preset("BiT-M-R50x1").architecture == get_preset("R50x1").architecture


def test_each_preset_says_where_its_weights_come_from():
    sources = list_presets(sources=True)
    assert list(sources) == list_presets()
    assert sources["R50x1"] == sources["ResNet18"] == {}
    assert sources["ResNet50V2"] == {
        "keras": "keras.applications.ResNet50V2(weights='imagenet')"}
    assert sources["BiT-M-R101x3"] == {
        "file": BUCKET_URL + "BiT-M-R101x3.npz",
        "hf": "hf://timm/resnetv2_101x3_bit.goog_in21k",
        "kaggle": "kaggle://google/bit/tensorFlow2/m-r101x3/1"}
    assert sources["BiT-M-R152x4-ILSVRC2012"]["hf"] == (
        "hf://timm/resnetv2_152x4_bit.goog_in21k_ft_in1k")
    assert sources["BiT-S-R50x3"]["kaggle"] == (
        "kaggle://google/bit/tensorFlow2/s-r50x3-ilsvrc2012-classification/1")
    assert "hf" not in sources["BiT-S-R50x3"]  # timm hosts no BiT-S
    assert sources["BiT-M-R50x1-distilled-224"]["hf"] == (
        "hf://timm/resnetv2_50x1_bit.goog_distilled_in1k")
    assert sources["BiT-Glyphs-R14x0.5"] == {
        "file": str(get_preset("BiT-Glyphs-R14x0.5").shipped_path)}
