import pytest

from hyperadapter.base import DEFAULT_MODEL_ID, BaseModelError, load_base


def test_default_base_is_frozen_and_named(base):
    assert base.model_id == DEFAULT_MODEL_ID
    assert not base.model.training
    assert all(not p.requires_grad for p in base.model.parameters())
    assert base.num_layers == 30 and base.is_chat
    shapes = base.linear_shapes()
    assert shapes["model.layers.0.self_attn.k_proj"] == (576, 192)


def test_missing_model_is_a_clear_error_without_download(tmp_path, monkeypatch):
    with pytest.raises(BaseModelError, match="config.json"):
        load_base(str(tmp_path))
    with pytest.raises(BaseModelError, match="offline"):
        load_base("no-such-org/no-such-model-xyz", models_dir=tmp_path)


def test_a_local_hf_folder_loads(base, tmp_path):
    from hyperadapter.base import resolve_model_path
    from hyperadapter.config import load_settings
    path, _ = resolve_model_path("default", load_settings().models_dir)
    other = load_base(str(path))
    assert other.model_id == path.name and other.num_layers == 30
