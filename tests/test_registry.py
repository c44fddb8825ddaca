"""The model registry: one field vocabulary (RENAMED_FIELDS), the error for an old field name,
upgrade_fields for old configs, and the layering (registry.py imports no family)."""
from __future__ import annotations

import pytest

from vit_jax import models
from vit_jax.models import registry


def test_renamed_fields_table():
    assert models.RENAMED_FIELDS is registry.RENAMED_FIELDS
    assert models.RENAMED_FIELDS == {"embed_dim": "width", "dims": "widths", "heads": "num_heads",
                                     "cls_token": "class_token", "mlp_ratios": "mlp_ratio"}
    swin = models.model_fields(models.create("swin_tiny_patch4_window7_224"))
    cvt = models.model_fields(models.create("cvt_13_224"))
    for old, new in models.RENAMED_FIELDS.items():
        assert old not in swin and old not in cvt
        assert new in swin + cvt + models.model_fields(models.ViT)


@pytest.mark.parametrize("name,old,new", [
    ("swin_tiny_patch4_window7_224", "embed_dim", "width"),
    ("cvt_13_224", "dims", "widths"),
    ("cvt_13_224", "heads", "num_heads"),
    ("cvt_13_224", "cls_token", "class_token"),
    ("cvt_13_224", "mlp_ratios", "mlp_ratio"),
])
def test_create_names_the_new_field(name, old, new):
    with pytest.raises(ValueError, match=f"model field '{old}' is now '{new}'.*config.model.{new}="):
        models.create(name, **{old: 1})


def test_new_names_work():
    m = models.create("swin_tiny_patch4_window7_224", width=48)
    assert m.width == 48 and m.num_features == 48 * 8
    m = models.create("cvt_13_224", widths=[8, 16, 24], num_heads=[1, 2, 3], mlp_ratio=2.0,
                      class_token=[False, False, True])
    assert m.widths == (8, 16, 24) and m.num_heads == (1, 2, 3) and m.mlp_ratio == 2.0


def test_upgrade_fields():
    old = {"model_name": "x", "embed_dim": 48, "depths": (2, 2), "heads": (1, 2), "cls_token": [1]}
    new, notes = models.upgrade_fields(old)
    assert new == {"model_name": "x", "width": 48, "depths": (2, 2), "num_heads": (1, 2),
                   "class_token": [1]}
    assert list(new) == ["model_name", "width", "depths", "num_heads", "class_token"]  # order kept
    assert notes == ["embed_dim -> width", "heads -> num_heads", "cls_token -> class_token"]
    assert old["embed_dim"] == 48                     # the input is not changed
    assert models.upgrade_fields({"width": 3}) == ({"width": 3}, [])
    with pytest.raises(ValueError, match="'dims' and 'widths' are both set"):
        models.upgrade_fields({"dims": (1,), "widths": (2,)})
    upgraded, _ = models.upgrade_fields({"dims": (8, 16, 24), "heads": (1, 2, 3)})
    assert models.create("cvt_13_224", **upgraded).widths == (8, 16, 24)


def test_unknown_model_lists_the_generic_names():
    with pytest.raises(ValueError, match="list_models.*vit_\\{size\\}.*swin_\\{size\\}"):
        models.create("no_such_model")


def test_registry_imports_no_family():
    """The arrows point one way: families import the registry at the top, never the package."""
    src = open(registry.__file__).read()
    assert "from vit_jax" not in src and "import vit_jax" not in src
    for family in ("vit", "swin", "cvt", "cct"):
        text = open(registry.__file__.replace("registry.py", f"{family}.py")).read()
        assert "from vit_jax.models.registry import" in text
        assert "from vit_jax.models import" not in text
    # importing the package registers every family
    assert {"vit_base_patch16_224", "swin_tiny_patch4_window7_224", "cvt_13_224",
            "cct_7_3x1_32"} <= set(models.list_models())
