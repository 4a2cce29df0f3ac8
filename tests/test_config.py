from __future__ import annotations

from pathlib import Path

import pytest

from gazimed_lab.config import (
    ConfigError,
    available_presets,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)


def test_shipped_presets_are_the_three_named_ones():
    assert set(available_presets()) >= {"default", "cpu-demo", "full"}


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_loads_and_validates(name):
    cfg = load_config(name)
    assert cfg.preset == name
    assert cfg.data.channels in (1, 2, 3)


def test_default_preset_holds_reference_settings():
    cfg = load_config("default")
    assert cfg.data.grid == "mni152_2mm"
    assert list(cfg.model.patch_size) == [4, 4, 4]
    assert cfg.model.embed_dim == 96
    assert list(cfg.model.depths) == [2, 2, 6, 2]
    assert list(cfg.model.num_heads) == [3, 6, 12, 24]
    assert cfg.optim.learning_rate == pytest.approx(1e-4)
    assert cfg.trainer.accumulate_grad_batches == 8


def test_cpu_demo_is_smaller_than_default():
    demo, ref = load_config("cpu-demo"), load_config("default")
    assert demo.model.embed_dim < ref.model.embed_dim
    assert demo.data.grid != ref.data.grid


def test_overrides_are_parsed_as_yaml():
    cfg = load_config("cpu-demo", ["trainer.max_epochs=3", "model.depths=[1,1,2,1]",
                                   "optim.learning_rate=0.01", "data.clinical_columns=[a,b]"])
    assert cfg.trainer.max_epochs == 3
    assert list(cfg.model.depths) == [1, 1, 2, 1]
    assert cfg.optim.learning_rate == pytest.approx(0.01)
    assert list(cfg.data.clinical_columns) == ["a", "b"]


def test_unknown_key_names_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"`trainer.max_epoch` is not a valid key.*"
                                          r"did you mean `trainer.max_epochs`"):
        load_config("cpu-demo", ["trainer.max_epoch=3"])


def test_unknown_section_names_nearest_section():
    with pytest.raises(ConfigError, match=r"did you mean `optim`"):
        load_config("default", ["optimizer.learning_rate=1"])


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"preset name .*cpu-demo.* got `cpu_demo`"):
        load_config("cpu_demo")


def test_wrong_type_is_rejected_with_the_source():
    with pytest.raises(ConfigError, match=r"override `trainer.max_epochs=abc`"):
        load_config("default", ["trainer.max_epochs=abc"])


def test_invalid_value_is_rejected():
    with pytest.raises(ConfigError, match=r"`data.channels` must be one of 1, 2, 3, got 4"):
        load_config("default", ["data.channels=4"])
    with pytest.raises(ConfigError, match=r"`data.pet_reference` must be one of whole_brain"):
        load_config("default", ["data.pet_reference=occipital"])
    with pytest.raises(ConfigError, match=r"`model.fusion_pooling` must be one of attention"):
        load_config("default", ["model.fusion_pooling=max"])


@pytest.mark.parametrize("key", ["model.in_channels", "model.img_size",
                                 "model.clinical_features_dim"])
def test_removed_keys_name_their_replacement(key, tmp_path: Path):
    old = tmp_path / "config.yaml"
    section, name = key.split(".")
    old.write_text(f"preset: cpu-demo\n{section}:\n  {name}: 2\n")
    with pytest.raises(ConfigError, match=rf"`{key}` must not be set: it was removed.*"
                                          rf"\({old}\); .*InputSpec"):
        load_config(old)


def test_a_run_folder_config_of_gazimed_lab_0_1_names_the_migration():
    legacy = Path(__file__).parent / "data" / "legacy_v1_config.yaml"
    with pytest.raises(ConfigError, match=r"`model.in_channels` must not be set.*Delete the key"):
        load_config(legacy)


def test_malformed_override():
    with pytest.raises(ConfigError, match=r"override must look like"):
        load_config("default", ["trainer.max_epochs"])


def test_saved_config_round_trips(tmp_path: Path):
    cfg = load_config("cpu-demo", ["trainer.max_epochs=7", "system.seed=3"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(cfg)
    assert config_to_dict(config_from_dict(config_to_dict(cfg))) == config_to_dict(cfg)


def test_yaml_file_with_unknown_key_names_the_file(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: cpu-demo\nmodel:\n  embed_dimm: 24\n")
    with pytest.raises(ConfigError, match=r"model.embed_dimm.*mine.yaml.*model.embed_dim"):
        load_config(path)


def test_yaml_file_starts_from_its_preset(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: cpu-demo\ntrainer:\n  max_epochs: 2\n")
    cfg = load_config(path)
    assert cfg.trainer.max_epochs == 2
    assert cfg.model.embed_dim == load_config("cpu-demo").model.embed_dim


def test_overrides_from_skips_none_and_round_trips_types():
    from gazimed_lab.config import overrides_from

    items = overrides_from({"trainer.max_epochs": 5, "data.batch_size": None,
                            "trainer.precision": "bf16-mixed", "model.depths": [1, 1, 2, 1],
                            "data.augment": False})
    assert len(items) == 4 and not any(i.startswith("data.batch_size") for i in items)
    cfg = load_config("cpu-demo", items)
    assert cfg.trainer.max_epochs == 5 and cfg.trainer.precision == "bf16-mixed"
    assert list(cfg.model.depths) == [1, 1, 2, 1] and cfg.data.augment is False
    assert cfg.data.batch_size == load_config("cpu-demo").data.batch_size


def test_duplicate_yaml_keys_are_refused_naming_key_and_lines(tmp_path: Path):
    path = tmp_path / "dup.yaml"
    path.write_text("preset: cpu-demo\ntrainer:\n  max_epochs: 5\n  max_epochs: 50\n")
    with pytest.raises(ConfigError, match=r"got `max_epochs` twice \(lines 3 and 4 of "
                                          rf"{path}\); keep one"):
        load_config(path)
    path.write_text("preset: cpu-demo\ntrainer:\n  max_epochs: 5\nsystem:\n  seed: 1\n")
    assert load_config(path).trainer.max_epochs == 5  # same key in two sections is fine
