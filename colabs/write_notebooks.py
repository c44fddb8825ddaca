"""Writes the notebooks in colabs/ (cells only, no outputs): python colabs/write_notebooks.py

The notebooks' source is this file, so a change to a notebook is a reviewable diff here;
tests/test_colabs.py checks that the stored .ipynb files are what this writes, then runs them.
Each notebook: a title cell, the install cell, one parameter cell (SMALL: the few-step CPU setting
CI executes), then thin cells that call the library (train, viz, evaluate/, convert). The shared
cells and builders are in colabs/notebook_cells.py (run from colabs/ or as this script: it sits
beside this file on the import path).
"""
import os
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell
from notebook_cells import INSTALL, SHOW, notebook, params_cell, title

HERE = os.path.dirname(os.path.abspath(__file__))

# ------------------------------------------------------------------------------------ quickstart
QUICKSTART = [
    title("quickstart.ipynb", '''
# vit_jax quickstart: a ViT on 4,000 MNIST digits

Trains `configs/quickstart.py` (a 0.8M-parameter ViT with 7x7 patches, from scratch on
`mnist5k`: 97.4% test accuracy after 30 epochs, about 4 minutes on a 2-core CPU), plots the loss
and accuracy curves from the run's `metrics.jsonl`, and classifies a few test digits with the
trained weights read back from the checkpoint.'''),
    new_code_cell(INSTALL),
    params_cell(""),
    new_code_cell(SHOW),
    new_markdown_cell("## Train\n\n`train.run` is what `python -m vit_jax.main --config "
                      "configs/quickstart.py --workdir DIR` runs; running this cell again on the "
                      "same workdir resumes from its last checkpoint."),
    new_code_cell('''\
from vit_jax import train
from vit_jax.config_base import load_config_file

config = load_config_file(os.path.join(CONFIGS, "quickstart.py"))
config.tensorboard = False
if SMALL:
    few_steps(config, 40, evals=2)
WORKDIR = os.path.join(OUT, "quickstart_small" if SMALL else "quickstart")
final = train.run(config, WORKDIR)
print({k: round(v, 4) for k, v in final.items()})'''),
    new_markdown_cell("## Curves\n\nEvery row of `metrics.jsonl` is one log or evaluation step."),
    new_code_cell('''\
save_and_show(viz.curves_figure(WORKDIR, ("train/loss", "eval/test/loss", "eval/test/accuracy")),
              "quickstart_curves.png")'''),
    new_markdown_cell("## Inference on test digits\n\n`load_run` rebuilds the network from the "
                      "workdir's `config.json` and reads the latest checkpoint; `run.predict` "
                      "applies the run's eval transform to raw images and returns class probabilities."),
    new_code_cell('''\
from vit_jax.runs import load_run

run = load_run(WORKDIR)
test = run.source()                                                   # mnist5k's test split
examples = [test[int(i)] for i in np.linspace(0, len(test) - 1, 10)]
probs = run.predict(examples)                                         # (10, 10) class probabilities

fig = viz.predictions_figure([e["image"] for e in examples], probs, [e["label"] for e in examples])
save_and_show(fig, "quickstart_predictions.png")
print("predicted:", probs.argmax(-1).tolist(), " true:", [e["label"] for e in examples])'''),
]

# ------------------------------------------------------------------------------------ MAE
MAE_NB = [
    title("mae_visualize.ipynb", '''
# MAE reconstructions at several mask ratios

Loads a masked autoencoder and shows, for a few images, the original, the masked input and the
reconstruction at mask ratios 50%, 75% and 90% (the same random patch order for every ratio, so
the masks nest). The MAE is one of:
- a vit_jax MAE workdir (`MAE_WORKDIR`), e.g. from
  `python -m vit_jax.main --config configs/mnist5k/mae_pretrain.py --workdir workdirs/mnist5k_mae`;
- a Hugging Face `ViTMAEForPreTraining` folder (`HF_MAE_FOLDER`, what `save_pretrained` writes,
  e.g. a download of `facebook/vit-mae-base`), shown on two photos from scikit-learn;
- with both empty, an MAE pre-trained here on `mnist5k` (`configs/mnist5k/mae_pretrain.py`:
  60 epochs, about half an hour on a 2-core CPU).'''),
    new_code_cell(INSTALL),
    params_cell('''\
MAE_WORKDIR = os.environ.get("VIT_JAX_MAE_WORKDIR", "")      # a vit_jax MAE run, or ""
HF_MAE_FOLDER = os.environ.get("VIT_JAX_HF_MAE_FOLDER", "")  # a ViTMAEForPreTraining folder, or ""
MASK_RATIOS = (0.5, 0.75, 0.9)
NUM_IMAGES = 6'''),
    new_code_cell(SHOW),
    new_markdown_cell("## Pre-train an MAE on mnist5k (only without `MAE_WORKDIR` / `HF_MAE_FOLDER`)"),
    new_code_cell('''\
from vit_jax import train
from vit_jax.config_base import load_config_file

if not (MAE_WORKDIR or HF_MAE_FOLDER):
    config = load_config_file(os.path.join(CONFIGS, "mnist5k", "mae_pretrain.py"))
    config.tensorboard = False
    if SMALL:
        few_steps(config, 20, evals=0)
    MAE_WORKDIR = os.path.join(OUT, "mae_small" if SMALL else "mae")
    print(train.run(config, MAE_WORKDIR))'''),
    new_markdown_cell("## Load the MAE and a few images\n\n`module` is a "
                      "`vit_jax.models.mae.MAE`; `images` are normalised as the model expects, "
                      "`mean` / `std` turn them back into pixels."),
    new_code_cell('''\
from vit_jax import convert
from vit_jax.data import transforms

if HF_MAE_FOLDER:
    from sklearn.datasets import load_sample_images

    module, variables = convert.load_hf(HF_MAE_FOLDER)
    size = module.encoder.image_size
    size = size if isinstance(size, int) else tuple(size)
    to_model = transforms.build(f"resize_center_crop({size}, crop_pct=1.0)|normalize('imagenet')")
    images = np.stack([to_model({"image": photo, "label": 0})["image"]
                       for photo in load_sample_images().images])
    mean, std = transforms.get_stats("imagenet")
else:
    from vit_jax.runs import load_run

    run = load_run(MAE_WORKDIR)
    module, variables = run.objective.model, {"params": run.params}
    source = run.source()
    images = run.images([source[int(i)] for i in np.linspace(0, len(source) - 1, NUM_IMAGES)])
    mean, std = transforms.normalization_stats(run.config.data.eval_transform)
print(type(module).__name__, "patch", module.patch_size, "images", images.shape)'''),
    new_markdown_cell("## Reconstructions\n\nOne noise draw for all ratios: a patch masked at "
                      "50% is also masked at 75% and 90%. With `norm_pix_loss` the prediction "
                      "is mapped back with each patch's own mean and variance, as in MAE's "
                      "visualisation."),
    new_code_cell('''\
import jax

gh, gw = module.encoder.base_grid
noise = jax.random.uniform(jax.random.key(0), (len(images), gh * gw))
fig, axes = plt.subplots(1, len(MASK_RATIOS), figsize=(4 * len(MASK_RATIOS), 1.4 * len(images) + 0.6))
for ax, ratio in zip(axes, MASK_RATIOS):
    out = module.clone(mask_ratio=ratio).apply(variables, images, noise=noise)
    ax.imshow(viz.mae_grid(images, out["pred"], out["mask"], module.patch_size, mean, std,
                           module.norm_pix_loss))
    ax.set_title(f"mask {ratio:.0%} (loss {float(out['loss']):.3f})\\noriginal | masked | reconstruction")
    ax.axis("off")
save_and_show(fig, "mae_reconstructions.png")'''),
]

# ------------------------------------------------------------------------------------ attention
ATTN_NB = [
    title("attention_and_correspondences.ipynb", '''
# Attention maps of a ViT, and EsViT's region correspondences

Two pictures of a self-distillation (EsViT / DINO) run:
- **attention**: for a few test images, the class token's attention over the patches in the last
  block, one map per head, and attention rollout over all blocks (Abnar & Zuidema 2020);
- **correspondences**: two augmented views of a digit and the 10 best-matched teacher tokens
  (EsViT's region-level matching), joined by lines.

`ESVIT_WORKDIR` is a finished EsViT/DINO run; empty, one is trained here
(`configs/mnist5k/esvit.py:vr,vit`: 20 epochs; host-bound multi-crop, so use a GPU runtime or
expect about half an hour on a 2-core CPU). `VIT_WORKDIR` shows the attention of any other ViT
run instead (supervised, MAE, EVA, ...); empty, the EsViT teacher's backbone is used.'''),
    new_code_cell(INSTALL),
    params_cell('''\
ESVIT_WORKDIR = os.environ.get("VIT_JAX_ESVIT_WORKDIR", "")  # an EsViT / DINO run, or "" to train one
VIT_WORKDIR = os.environ.get("VIT_JAX_VIT_WORKDIR", "")      # any ViT run for the attention maps, or ""
NUM_IMAGES = 4'''),
    new_code_cell(SHOW),
    new_markdown_cell("## Train EsViT on mnist5k (only without `ESVIT_WORKDIR`)\n\nBackbone: "
                      "the shared small-data ViT (4x4 patches); view and region losses."),
    new_code_cell('''\
from vit_jax import train
from vit_jax.config_base import load_config_file

if not ESVIT_WORKDIR:
    config = load_config_file(os.path.join(CONFIGS, "mnist5k", "esvit.py"), "vr,vit")
    config.tensorboard = False
    if SMALL:   # also 2 local crops, small heads, 2 blocks
        few_steps(config, 6, batch_size=16, evals=0)
        config.model.depth = 2
        config.esvit.update(dict(num_local=2, out_dim=256, hidden_dim=128, bottleneck_dim=64))
    ESVIT_WORKDIR = os.path.join(OUT, "esvit_small" if SMALL else "esvit")
    print(train.run(config, ESVIT_WORKDIR))'''),
    new_markdown_cell("## Attention maps\n\n`backbone_variables` is the backbone a downstream task "
                      "would start from (an EsViT/DINO run's EMA teacher, an MAE run's encoder, "
                      "a supervised run's network)."),
    new_code_cell('''\
from vit_jax.data import transforms
from vit_jax.evaluate import attention
from vit_jax.runs import load_run

vit_run = load_run(VIT_WORKDIR or ESVIT_WORKDIR)
model, variables = vit_run.model, vit_run.backbone_variables
which = "EMA teacher" if "ema_teacher" in vit_run.extra else "trained params"
source = vit_run.source()
examples = [source[int(i)] for i in np.linspace(0, len(source) - 1, NUM_IMAGES)]
images = vit_run.images(examples)

weights = attention.attention_weights(model, variables, images)     # one (B, heads, N, N) per block
maps = [attention.attention_rollout(weights, model)[:, None]]
if model.class_token:
    maps.insert(0, attention.cls_attention(weights[-1], model))   # (B, heads, h, w), last block
mean, std = transforms.normalization_stats(vit_run.config.data.eval_transform)
print(f"{vit_run.workdir} ({which}): columns = image | "
      + ("last block, class token, one map per head | " if model.class_token else "") + "rollout")
save_and_show(viz.attention_picture(images, np.concatenate(maps, axis=1), mean, std), "vit_attention.png")'''),
    new_markdown_cell("## Region correspondences\n\nTwo global crops (fixed seed) of two test "
                      "digits; each line joins a teacher token of the left view to its most "
                      "similar token of the right view, for the 10 most similar pairs (colours "
                      "only tell the pairs apart)."),
    new_code_cell('''\
esvit_run = vit_run if vit_run.workdir == ESVIT_WORKDIR else load_run(ESVIT_WORKDIR)
teacher = esvit_run.backbone_variables      # a DINO / EsViT run's backbone is its EMA teacher
pictures = [esvit_run.objective.correspondence_image(teacher, e, seed=0) for e in examples[:2]]
gap = np.full((16,) + pictures[0].shape[1:], 255, np.uint8)
save_and_show(np.concatenate([pictures[0], gap, pictures[1]]), "esvit_correspondences.png")'''),
]

# ------------------------------------------------------------------------------------ fine-tune
FT_NB = [
    title("finetune_your_data.ipynb", '''
# Fine-tune a pre-trained backbone on your own image folder

`DATA_DIR` is a folder laid out as `DATA_DIR/train/CLASS/*.png|jpg` and `DATA_DIR/test/CLASS/...`
(class names are the sub-folder names). `INIT_FROM` is the workdir of a pre-training run of any
method (MAE, EVA, DINO / EsViT, a supervised run): its backbone is loaded and fine-tuned with
`configs/mnist5k/finetune.py`'s recipe (layer-wise lr decay, drop path, label smoothing).

Left empty, `DATA_DIR` becomes a demo folder of MNIST digits written here as PNG files, and
`INIT_FROM` an MAE pre-trained here on `mnist5k`. For your own images, set the transforms: the
defaults make 28x28 grey images, the size of the pre-trained backbone (other sizes and RGB work
too: the position embedding is resized, but a grey backbone needs grey inputs).'''),
    new_code_cell(INSTALL),
    params_cell('''\
DATA_DIR = os.environ.get("VIT_JAX_DATA_DIR", "")    # DATA_DIR/{train,test}/CLASS/*.png, or "" for the demo
INIT_FROM = os.environ.get("VIT_JAX_INIT_FROM", "")  # a pre-training workdir, or "" to pre-train an MAE
TRAIN_TRANSFORM = "to_gray|resize((28, 28))|pad_crop(28, 2)|normalize('mnist')"
EVAL_TRANSFORM = "to_gray|resize((28, 28))|normalize('mnist')"'''),
    new_code_cell(SHOW),
    new_markdown_cell("## The image folder\n\nWithout `DATA_DIR`: mnist5k digits as PNG files, "
                      "`train/digit_K/` and `test/digit_K/` (20 + 5 per class with SMALL, "
                      "200 + 50 otherwise)."),
    new_code_cell('''\
from vit_jax.data import sources

if not DATA_DIR:
    DATA_DIR = os.path.join(OUT, "demo_folder_small" if SMALL else "demo_folder")
    for split, per_class in (("train", 20 if SMALL else 200), ("test", 5 if SMALL else 50)):
        digits = sources.mnist5k(split)
        for k in range(10):
            for i in np.flatnonzero(digits.labels == k)[:per_class]:
                viz.save_png(digits[i]["image"], os.path.join(DATA_DIR, split, f"digit_{k}", f"{i:04d}.png"))
train_folder, test_folder = sources.image_folder(DATA_DIR, "train"), sources.image_folder(DATA_DIR, "test")
print(train_folder, test_folder, "classes:", train_folder.classes)'''),
    new_markdown_cell("## A pre-trained backbone (only without `INIT_FROM`)\n\nMAE on mnist5k "
                      "(`configs/mnist5k/mae_pretrain.py`, 60 epochs, about half an hour on a "
                      "2-core CPU)."),
    new_code_cell('''\
from vit_jax import train
from vit_jax.config_base import load_config_file

if not INIT_FROM:
    config = load_config_file(os.path.join(CONFIGS, "mnist5k", "mae_pretrain.py"))
    config.tensorboard = False
    if SMALL:   # a checkpoint to start from, not a useful one
        few_steps(config, 10, evals=0)
        config.data.eval_split = ""
    INIT_FROM = os.path.join(OUT, "mae_small" if SMALL else "mae")
    print(train.run(config, INIT_FROM))'''),
    new_markdown_cell("## Fine-tune on the folder"),
    new_code_cell('''\
config = load_config_file(os.path.join(CONFIGS, "mnist5k", "finetune.py"), INIT_FROM)
config.data.name = "folder:" + os.path.abspath(DATA_DIR)
config.data.train_split, config.data.eval_split = "train", "test"
config.data.train_transform, config.data.eval_transform = TRAIN_TRANSFORM, EVAL_TRANSFORM
config.tensorboard = False
# the recipe's durations are in epochs (they fit any folder) except its warm-up, 60 mnist5k steps
config.optim.warmup_steps, config.optim.warmup_epochs = None, 3
config.log_every = 20
if SMALL:
    few_steps(config, 30, evals=2)
WORKDIR = os.path.join(OUT, "finetune_small" if SMALL else "finetune")
final = train.run(config, WORKDIR)
print({k: round(v, 4) for k, v in final.items()})'''),
    new_markdown_cell("## Curves and predictions on the test images"),
    new_code_cell('''\
from vit_jax.runs import load_run

save_and_show(viz.curves_figure(WORKDIR, ("train/loss", "eval/test/loss", "eval/test/accuracy")),
              "finetune_curves.png")

run = load_run(WORKDIR)
examples = [test_folder[int(i)] for i in np.linspace(0, len(test_folder) - 1, 10)]
fig = viz.predictions_figure([e["image"] for e in examples], run.predict(examples),
                             [e["label"] for e in examples], test_folder.classes)
save_and_show(fig, "finetune_predictions.png")'''),
]

NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "mae_visualize.ipynb": MAE_NB,
             "attention_and_correspondences.ipynb": ATTN_NB, "finetune_your_data.ipynb": FT_NB}



def write(directory: str = HERE) -> list[str]:
    """Writes every notebook into `directory`; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, cells in NOTEBOOKS.items():
        paths.append(os.path.join(directory, name))
        nbformat.write(notebook(cells), paths[-1])
    return paths


if __name__ == "__main__":
    for path in write(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print("wrote", path)
