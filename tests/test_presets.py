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
    with pytest.raises(ValueError, match=r"unknown BiT preset 'BiT-M-R50X1'.*'BiT-M-R50x1'"):
        get_preset("BiT-M-R50X1")


def test_the_table_records_each_models_training_resolution():
    assert get_preset("BiT-M-R152x4").resolution == 224
    assert get_preset("BiT-S-R50x3").resolution == 224
    assert get_preset("BiT-M-R101x1-ILSVRC2012").resolution == 480
    assert get_preset("BiT-M-R50x1-distilled-160").resolution == 160
    assert get_preset("BiT-Glyphs-R14x0.5").resolution == 32
    assert get_preset("R50x1").resolution is None and get_preset("R50x1").url is None
    assert len(list_presets()) == 6 + 3 * 6 + 2 + 1
