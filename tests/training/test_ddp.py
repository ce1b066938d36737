"""Two processes on loopback train together with DDP over gloo, launched as two "nodes"
exactly as the README shows (MASTER_ADDR, MASTER_PORT, NODE_RANK, WORLD_SIZE per process),
and end with identical weights, each having trained on its own half of the data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from loopback import free_port, node_env

pytestmark = pytest.mark.slow

# Runs the real command line; on_train_end also saves each rank's weights and the sources of
# the images it trained on, so the test can compare the ranks.
LAUNCH = textwrap.dedent(
    """
    import json, os, sys, torch
    from sam_lightning.training.module import SamTrainingModule

    seen = []
    train_step = SamTrainingModule.training_step

    def recording_step(self, batch, index):
        seen.extend(batch["sources"])
        return train_step(self, batch, index)

    def on_train_end(self):
        out = os.environ["RANK_OUTPUT"] + f"/rank{self.global_rank}"
        torch.save(self.model.state_dict(), out + ".pt")
        with open(out + ".json", "w") as file:
            json.dump({"sources": seen, "world_size": self.trainer.world_size}, file)

    SamTrainingModule.training_step = recording_step
    SamTrainingModule.on_train_end = on_train_end
    from sam_lightning.train import main
    sys.argv = ["sam_lightning.train", *sys.argv[1:]]
    main()
    """
)

OVERRIDES = [
    "+exp=demo",
    "model.image_size=64",
    "data.train.num_images=8",
    "data.train.image_size=64",
    "data.val.num_images=2",
    "data.batch_size=2",
    "data.max_masks=3",
    "training.num_point_rounds=1",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "+trainer.enable_progress_bar=false",
    "trainer.num_nodes=2",
    "trainer.devices=1",
    "trainer.accelerator=cpu",
    "trainer.strategy=ddp",
]


@pytest.mark.parametrize("variant", ["full", "lora_bf16", "cached"])
def test_two_nodes_on_loopback_train_together(tmp_path, variant):
    """Also with LoRA adapters on a base checkpoint, in bf16-mixed: DDP reduces only what
    trains (the base is frozen) and the checkpoint holds only that; and from one embedding
    cache that both ranks fill with the images of their own batches."""
    run_dir, outputs = tmp_path / "run", tmp_path / "ranks"
    outputs.mkdir()
    overrides = list(OVERRIDES)
    if variant == "lora_bf16":
        from sam_lightning.modeling.build import build_sam
        from sam_lightning.modeling.checkpoint import save_checkpoint

        torch.manual_seed(0)
        save_checkpoint(build_sam("vit_nano", image_size=64), tmp_path / "base.pth")
        overrides += [
            f"model.checkpoint={tmp_path / 'base.pth'}",
            "model.lora.rank=2",
            "trainer.precision=bf16-mixed",
        ]
    if variant == "cached":
        overrides += [
            "training.frozen=[image_encoder]",
            f"training.embedding_cache={tmp_path / 'cache'}",
        ]
    port = free_port()
    processes = []
    for rank in range(2):
        env = {
            **os.environ,
            **node_env(port, rank, 2),
            "RANK_OUTPUT": str(outputs),
            "OMP_NUM_THREADS": "1",
        }
        command = [sys.executable, "-c", LAUNCH, *overrides, f"hydra.run.dir={run_dir}"]
        processes.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    logs = [process.communicate(timeout=900)[0].decode() for process in processes]
    for process, log in zip(processes, logs):
        assert process.returncode == 0, log[-3000:]

    weights = [torch.load(outputs / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    records = [json.loads((outputs / f"rank{r}.json").read_text()) for r in range(2)]
    assert [record["world_size"] for record in records] == [2, 2]
    first, second = records[0]["sources"], records[1]["sources"]
    assert len(first) == len(second) == 3 * 2  # 3 steps x 2 images per rank
    assert not set(first) & set(second[:2])  # the first batches differ between the ranks
    # One run directory: rank 0 wrote the checkpoint and the metrics there.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 3
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key, value in state.items():
        assert torch.equal(weights[0][key.removeprefix("model.")], value), key
    if variant == "cached":  # each image each rank trained or validated on, embedded once
        entries = list((tmp_path / "cache").rglob("*.safetensors"))
        assert len(entries) == len(set(first) | set(second)) + 2  # + the 2 validation images
        assert not list((tmp_path / "cache").rglob("*.tmp"))
    lora = [key for key in state if ".lora_" in key]
    if variant != "lora_bf16":
        assert len(state) == len(weights[0]) and not lora
    else:  # the adapters and the decoder, not the frozen encoder base
        assert lora and len(state) < len(weights[0])
        assert not any(".base_layer." in key for key in state)
