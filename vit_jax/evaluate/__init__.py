"""Evaluation protocols for pre-trained backbones: fine-tuning (the supervised objective with
config.init_from and optim.layer_decay), linear probe and k-NN on frozen features."""
