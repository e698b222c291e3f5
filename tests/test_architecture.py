import pytest

from bitkeras.models.architecture import ARCHITECTURES, Architecture, architecture_name


def test_channel_plan_of_r50x1():
    r50 = ARCHITECTURES["R50x1"]
    assert r50.root_channels == 64
    assert [r50.mid_channels(b) for b in (1, 2, 3, 4)] == [64, 128, 256, 512]
    assert r50.feature_channels == 2048
    units = list(r50.units())
    assert len(units) == 16
    # First unit of each block projects; only blocks 2-4 stride.
    assert [(u[0], u[1], u[5], u[6]) for u in units if u[6]] == [
        (1, 1, 1, True), (2, 1, 2, True), (3, 1, 2, True), (4, 1, 2, True)
    ]


@pytest.mark.parametrize("name, features", [("R50x3", 6144), ("R101x1", 2048), ("R152x4", 8192)])
def test_feature_channels_are_2048_times_width(name, features):
    assert ARCHITECTURES[name].feature_channels == features


def test_multiply_adds_match_published_resnet50_cost():
    # ResNet-50 is about 4.1 GMACs at 224x224 with a 1000-class head.
    assert ARCHITECTURES["R50x1"].multiply_adds(224, 1000) == pytest.approx(4.09e9, rel=0.01)
    # The conv cost scales with the area.
    ratio = ARCHITECTURES["R50x1"].multiply_adds(448) / ARCHITECTURES["R50x1"].multiply_adds(224)
    assert ratio == pytest.approx(4, rel=0.02)


def test_fractional_width_must_keep_group_divisibility():
    assert Architecture((1, 1, 1, 1), 0.5).root_channels == 32
    with pytest.raises(ValueError, match="width_factor=0.25 gives 16 root channels"):
        Architecture((1, 1, 1, 1), 0.25)


@pytest.mark.parametrize("units", [(3, 4, 6), (3, 0, 6, 3), (3, 4.5, 6, 3)])
def test_block_units_are_validated(units):
    with pytest.raises(ValueError, match="block_units must be four positive integers"):
        Architecture(units, 1)


def test_architecture_names():
    assert architecture_name(Architecture((3, 4, 23, 3), 1)) == "R101x1"
    assert architecture_name(Architecture((1, 1, 1, 1), 1)) is None


def test_layers_before_a_block_are_the_root_and_earlier_units():
    r50 = ARCHITECTURES["R50x1"]
    assert r50.layers_before(1) == ["root_conv"]
    assert r50.layers_before(3) == ["root_conv", "block1_unit01", "block1_unit02",
                                    "block1_unit03", "block2_unit01", "block2_unit02",
                                    "block2_unit03", "block2_unit04"]
    with pytest.raises(ValueError, match="block must be 1..4; got 5"):
        r50.layers_before(5)
