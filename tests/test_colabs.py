"""The Colab notebooks in colabs/ run top to bottom (small settings, CPU) and write their pictures.

Each notebook is executed in a fresh "python3" kernel (this environment's ipykernel) from colabs/,
with VIT_JAX_COLAB_SMALL=1 (the notebook's one parameter cell cuts every run to a few steps) and
VIT_JAX_COLAB_OUT=<tmp dir>; any cell error fails the test. The kernel gets one CPU device:
conftest.py's 8 simulated devices (XLA_FLAGS) are removed from its environment.
"""
from __future__ import annotations

import importlib.util
import os
import re
import time

import ipykernel  # noqa: F401  (the test extra installs all four: no skips in CI)
import matplotlib  # noqa: F401
import nbclient
import nbformat
import pytest

COLABS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colabs")
CELL_TIMEOUT_S = 300

# notebook -> the pictures it must write under VIT_JAX_COLAB_OUT
NOTEBOOKS = {
    "quickstart.ipynb": ["quickstart_curves.png", "quickstart_predictions.png"],
    "mae_visualize.ipynb": ["mae_reconstructions.png"],
    "attention_and_correspondences.ipynb": ["vit_attention.png", "esvit_correspondences.png"],
    "finetune_your_data.ipynb": ["finetune_curves.png", "finetune_predictions.png"],
}
SMALL_DEFINITION = re.compile(r"^SMALL\s*=", re.MULTILINE)


def _read(name: str):
    return nbformat.read(os.path.join(COLABS, name), as_version=4)


def test_notebook_list_is_complete():
    assert sorted(f for f in os.listdir(COLABS) if f.endswith(".ipynb")) == sorted(NOTEBOOKS)


def test_notebooks_are_what_write_notebooks_writes(tmp_path, monkeypatch):
    """colabs/write_notebooks.py is the notebooks' source: the stored files must equal its output."""
    monkeypatch.syspath_prepend(COLABS)   # its shared cells, colabs/notebook_cells.py, sit beside it
    spec = importlib.util.spec_from_file_location("write_notebooks", os.path.join(COLABS, "write_notebooks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in module.write(str(tmp_path)):
        name = os.path.basename(path)
        with open(path) as f, open(os.path.join(COLABS, name)) as g:
            assert f.read() == g.read(), \
                f"colabs/{name} differs from what colabs/write_notebooks.py writes: edit the script and rerun it"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_stored_clean(name):
    """One parameter cell defines SMALL; no outputs or execution counts are committed."""
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    defining = [c for c in code if SMALL_DEFINITION.search(c.source)]
    assert len(defining) == 1, f"{name}: {len(defining)} cells define SMALL; want exactly one"
    assert "VIT_JAX_COLAB_SMALL" in defining[0].source and "VIT_JAX_COLAB_OUT" in defining[0].source
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, \
            f"{name}: stored outputs in cell {cell.get('id')}; clear them before committing"
    assert nb.cells[0].cell_type == "markdown"
    assert "find_spec(\"vit_jax\")" in code[0].source, f"{name}: the first code cell installs vit_jax"


def _assert_png(path: str) -> None:
    from PIL import Image

    assert os.path.isfile(path), f"missing picture {path}"
    assert os.path.getsize(path) > 0
    with Image.open(path) as im:
        im.verify()                      # a valid PNG, not only a file with the right name
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 32 and im.height >= 32
        im.load()


def _execute(name: str, tmp_path, monkeypatch, **env: str) -> str:
    """Runs the notebook with SMALL settings; returns its OUT folder (tmp_path/out)."""
    out_dir = tmp_path / "out"
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")  # one CPU device, fast compiles
    # "python3" is then this interpreter's ipykernel, not a user-level kernelspec of another Python
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter_data"))
    monkeypatch.setenv("VIT_JAX_COLAB_SMALL", "1")
    monkeypatch.setenv("VIT_JAX_COLAB_OUT", str(out_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = _read(name)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": COLABS}})
    start = time.perf_counter()
    client.execute()                    # raises CellExecutionError on any cell error
    print(f"{name}: executed in {time.perf_counter() - start:.1f} s")
    return str(out_dir)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs(name, tmp_path, monkeypatch):
    out = _execute(name, tmp_path, monkeypatch)
    for picture in NOTEBOOKS[name]:
        _assert_png(os.path.join(out, picture))


def test_mae_notebook_with_hugging_face_folder(tmp_path, monkeypatch):
    """The HF_MAE_FOLDER branch: a tiny random ViTMAEForPreTraining saved with save_pretrained."""
    import torch
    import transformers

    from tests.hf_parity import mae_sincos
    cfg = transformers.ViTMAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, decoder_hidden_size=32,
                                    decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                    decoder_intermediate_size=64, norm_pix_loss=True)
    model = transformers.ViTMAEForPreTraining(cfg)
    with torch.no_grad():   # the fixed sin-cos tables of a trained MAE (random init may leave zeros)
        for name, p in model.named_parameters():
            if name.endswith(("position_embeddings", "decoder_pos_embed")):
                p.copy_(mae_sincos(p.shape[1] - 1, p.shape[2]))
    folder = tmp_path / "hf_mae"
    model.save_pretrained(folder)
    out = _execute("mae_visualize.ipynb", tmp_path, monkeypatch, VIT_JAX_HF_MAE_FOLDER=str(folder))
    _assert_png(os.path.join(out, "mae_reconstructions.png"))
    assert not os.path.exists(os.path.join(out, "mae_small")), "with HF_MAE_FOLDER nothing is trained"
