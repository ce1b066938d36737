"""Training from cached image embeddings (``training.embedding_cache``): the same steps as
without the cache, stale caches refused, the settings that change the embeddings refused,
and frozen parts run in eval mode."""

from __future__ import annotations

import pytest
import torch
from test_train_entry import assert_same_weights, config, final_weights, logged_losses

from sam_lightning.modeling.build import build_sam
from sam_lightning.modeling.checkpoint import save_checkpoint
from sam_lightning.train import StartError, train
from sam_lightning.training.embedding_cache import StaleCacheError
from sam_lightning.training.module import SamTrainingModule

FROZEN = ["training.frozen=[image_encoder]", "trainer.max_steps=4", "checkpoint.every_n_steps=0"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: bitwise comparisons


@pytest.fixture(scope="module")
def uncached_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uncached")
    train(config(*FROZEN), run_dir)
    return run_dir


def test_cached_steps_equal_uncached_steps(tmp_path, uncached_run):
    cache = tmp_path / "cache"
    for run in ("filling", "reading"):  # the first run fills the cache, the second reads it
        train(config(*FROZEN, f"training.embedding_cache={cache}"), tmp_path / run)
        assert logged_losses(tmp_path / run) == logged_losses(uncached_run), run
        assert_same_weights(final_weights(uncached_run), final_weights(tmp_path / run))
    # 4 training and 2 validation images, each embedded once
    assert len(list(cache.rglob("*.safetensors"))) == 6


def test_a_cache_of_other_weights_is_refused(tmp_path):
    cache = tmp_path / "cache"
    train(config(*FROZEN, f"training.embedding_cache={cache}"), tmp_path / "first")
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    save_checkpoint(build_sam("vit_nano", image_size=64), other)
    with pytest.raises(StaleCacheError, match="fingerprint.*delete the directory"):
        train(
            config(*FROZEN, f"training.embedding_cache={cache}", f"model.checkpoint={other}"),
            tmp_path / "second",
        )


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["data.lsj=true"], StartError, "data.lsj=true"),
        (["training.frozen=[]"], ValueError, "training.frozen must list image_encoder"),
        (["training.drop_path_rate=0.1"], ValueError, "drop_path_rate=0.1"),
        (["model.lora.rank=2"], ValueError, "LoRA adapters train the image encoder"),
    ],
)
def test_settings_that_change_the_embeddings_are_refused(tmp_path, overrides, error, match):
    cache = f"training.embedding_cache={tmp_path / 'cache'}"
    with pytest.raises(error, match=match):
        train(config(*FROZEN, cache, *overrides), tmp_path / "run")
    assert not (tmp_path / "cache").exists()


def test_frozen_parts_run_in_eval_mode():
    module = SamTrainingModule(
        model_type="vit_tiny", image_size=64, frozen=["image_encoder"], drop_path_rate=0.5
    ).train()
    assert not module.model.image_encoder.training
    assert module.model.mask_decoder.training and module.model.prompt_encoder.training
    images = torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8)
    batch = {"images": images, "input_size": torch.tensor([[64, 64]])}
    first, second = module._embeddings(batch), module._embeddings(batch)
    assert torch.equal(first, second)  # no drop path: the frozen encoder is deterministic
    trained = SamTrainingModule(model_type="vit_tiny", image_size=64, drop_path_rate=0.5).train()
    assert trained.model.image_encoder.training
    with torch.no_grad():
        assert not torch.equal(trained._embeddings(batch), trained._embeddings(batch))


def test_a_frozen_encoder_stays_in_eval_mode_through_fit_and_validation(tmp_path, monkeypatch):
    modes = []
    step = SamTrainingModule.training_step

    def recording_step(self, batch, index):
        modes.append((self.model.image_encoder.training, self.model.mask_decoder.training))
        return step(self, batch, index)

    monkeypatch.setattr(SamTrainingModule, "training_step", recording_step)
    overrides = [*FROZEN, "training.drop_path_rate=0.3", "trainer.val_check_interval=2"]
    train(config(*overrides), tmp_path)
    assert modes == [(False, True)] * 4  # also after the validation at step 2
