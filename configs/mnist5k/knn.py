"""k-NN (DINO's protocol: cosine, T = 0.07) on mnist5k features of ARG's backbone, or a random one.

    python -m vit_jax.main --config configs/mnist5k/knn.py:workdirs/mnist5k_mae --workdir workdirs/mnist5k_mae_knn
    python -m vit_jax.main --config configs/mnist5k/knn.py --workdir workdirs/mnist5k_random_knn

Memory: the 4,000 training digits; queries: the 1,000 test digits; features: the class token
after the final norm, or with ARG = WORKDIR,gap (or ",gap" for a random one) the mean of the
final-norm patch tokens. Evaluation only (total_steps = 0). Results: README's small-data table.
"""
import ml_collections as mlc

from vit_jax.config_base import backbone_of_run, mnist5k_config


def get_config(arg: str = ""):
    workdir, _, pool = (arg or "").partition(",")
    c = mnist5k_config()
    c.objective = "knn"
    backbone_of_run(c, workdir)  # the run's own backbone (ViT, Swin, CvT) and its weights
    if pool:  # ARG = WORKDIR,gap: the mean of the final-norm patch tokens instead of the class token
        if pool != "gap":
            raise ValueError(f"ARG {arg!r}: use WORKDIR or WORKDIR,gap")
        c.model.pool, c.model.fc_norm = "gap", False
    c.evals = mlc.ConfigDict({"knn": dict(type="knn", ks=(10, 20, 100, 200), temperature=0.07)})
    c.total_steps = 0
    return c
