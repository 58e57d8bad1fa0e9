"""A synthetic stand-in for ImageNet pretraining, for runs whose models are too small for real weights.

The embedded smoke run trains toy-width models, which no published checkpoint fits. So that its
"pretrained" arms still start from weights learned elsewhere, and through exactly the loader the
real ImageNet files go through, ``pretrain_encoder`` trains the model on a different synthetic task
(``segbench.data.synthetic.generate_shapes``: generic objects on random textures, neither skin nor
mucosa), then writes its encoder in the upstream checkpoint format
(``segbench.pretrained.save_encoder_checkpoint``). ``pretrained:`` in the config then names that file,
as it names the ImageNet file in the paper protocol.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segbench.config import ConfigError
from segbench.data.synthetic import generate_shapes
from segbench.losses import BceDiceLoss
from segbench.pretrained import save_encoder_checkpoint
from segbench.registry import create_model, get_card
from segbench.train import (configure_determinism, epoch_batches, forward, recipe_loss, select_device,
                            training_batch)


def pretraining_model(cfg: dict, weights: str | Path) -> str:
    """The model whose pretraining writes ``weights`` (``pretrain.models`` maps model -> file)."""
    for model, path in cfg["pretrain"]["models"].items():
        if Path(path) == Path(weights):
            return model
    raise ConfigError(f"no model in the config's pretrain.models writes {weights}; pretrain.models: "
                      f"{cfg['pretrain']['models'] or 'empty'}")


def pretrain_encoder(cfg: dict, model_name: str, out: str | Path) -> Path:
    """Train ``model_name`` (with its ``model_args``) on the synthetic shapes and write its encoder to ``out``."""
    settings, train_cfg = cfg["pretrain"], cfg["train"]
    configure_determinism(settings["seed"], train_cfg["deterministic"], train_cfg["num_threads"])
    device = select_device(train_cfg["device"])
    images, masks = generate_shapes(settings["images"], cfg["image_size"], settings["seed"])
    model = create_model(model_name, **cfg["model_args"].get(model_name, {})).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=train_cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings["steps"],
                                                           eta_min=train_cfg["eta_min"])
    criterion = BceDiceLoss(get_card(model_name).output, train_cfg["bce_weight"], train_cfg["dice_weight"])
    generator = torch.Generator().manual_seed(settings["seed"])
    steps = 0
    progress = tqdm(total=settings["steps"], desc=f"pretrain {model_name}", mininterval=2.0, disable=None)
    while steps < settings["steps"]:
        order = torch.randperm(len(images), generator=generator).numpy()
        losses = []
        for index in epoch_batches(order, train_cfg["batch_size"])[: settings["steps"] - steps]:
            inputs, targets = training_batch(images, masks, index, train_cfg, generator, device)
            loss = recipe_loss(criterion, forward(model, inputs, train_cfg["amp"], device), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            progress.update()
        steps += len(losses)
        print(f"pretrain {model_name}: {steps}/{settings['steps']} steps, mean loss of this pass {np.mean(losses):.4f}",
              flush=True)
    progress.close()
    save_encoder_checkpoint(model, model_name, out)
    return Path(out)
