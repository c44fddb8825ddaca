"""EVA-01 pre-training, the paper's recipe (Fang et al. 2022, baaivision/EVA EVA-01): a ViT-g/14
student regresses the patch features of a frozen CLIP ViT-L/14 at masked positions.

    python -m vit_jax.main --config configs/imagenet/eva_pretrain.py --workdir gs://.../eva_g \
        --config.eva.teacher=hf:/path/to/clip-vit-large-patch14 \
        --config.data.data_dir=/path/to/tfds --multihost

Teacher: a Hugging Face CLIPVisionModelWithProjection (or CLIPModel) folder of OpenAI's CLIP-L/14;
target = every patch token after ln_post and the visual projection (768-d), class token dropped,
computed in bfloat16 on the same 224 crop (CLIP statistics, converted on device). Student:
ViT-g/14 (1408 wide, 40 deep, MLP 6144), learned mask token, 105 of 256 patches masked in blocks
of at least 16, -cosine loss, init N(0, 0.015) truncated at one std. Optimizer: AdamW (0.9, 0.98),
eps 1e-6, lr 1e-3 at batch 4096, weight decay 0.05, 2 warmup epochs, cosine, grad clip 3.0,
drop path 0.1, RandomResizedCrop(0.2, 1) + flip. EVA-01 trained 150 epochs on 29.6M images
(ImageNet-21k, Object365, COCO, ...); here the data is imagenet2012 unless data.name says otherwise,
and num_epochs is scaled to a similar number of samples. FSDP over the batch devices (1B params).
Not run here (no ImageNet or CLIP-L offline); validated in tests with a tiny CLIP folder.
"""
from vit_jax import objectives
from vit_jax.config_base import imagenet_config


def get_config(arg: str = ""):
    del arg
    c = imagenet_config()
    c.objective = "eva"
    c.model_name = "vit_giant_patch14_224"
    c.model.update(dict(drop_path_rate=0.1, layer_norm_eps=1e-6, remat=True, scan=True))
    c.eva = objectives.default_config("eva")
    c.eva.update(dict(teacher="hf:clip-vit-large-patch14", teacher_dtype="bfloat16", mask="block",
                      mask_count=105, min_block=16, init_std=0.015))
    c.data.train_transform = "rrc(224, scale=(0.2, 1.0))|flip|normalize('imagenet')"
    c.data.wire = "float32"   # EVA's host step (prepare_example) reads the normalised image
    c.batch_size = 4096
    c.total_examples = 150 * 29_600_000   # EVA-01: 150 epochs of its 29.6M-image set
    c.optim.lr = 1e-3
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6
    c.optim.weight_decay = 0.05
    c.optim.clip_norm = 3.0
    c.optim.warmup_examples = 2 * 29_600_000
    c.mesh.data, c.mesh.fsdp = 1, -1
    return c
