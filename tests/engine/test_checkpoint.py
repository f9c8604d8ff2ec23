import pytest
import torch

from kiln.engine.checkpoint import load_checkpoint, load_weights
from kiln.engine.files import save_atomic
from kiln.errors import KilnError


def test_corrupt_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "best_model.pt"
    save_atomic({"kiln_format": 1, "recipe": "nav", "state_dict": {"w": torch.ones(3)}}, path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(KilnError, match="could not be read .*corrupt or not a PyTorch checkpoint") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_text_file_is_rejected(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(KilnError, match="corrupt or not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_foreign_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "theirs.pt"
    torch.save({"model_state_dict": {"w": torch.ones(1)}}, path)
    with pytest.raises(KilnError, match="is not a kiln checkpoint"):
        load_checkpoint(path)


def test_wrong_recipe_and_missing_file(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"kiln_format": 1, "recipe": "traffic"}, path)
    with pytest.raises(KilnError, match="from recipe 'traffic', not 'nav'"):
        load_checkpoint(path, "nav")
    with pytest.raises(KilnError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_shape_mismatch_names_the_tensor():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(KilnError, match=r"'weight' has shape \(2, 4\), the model expects \(2, 3\)"):
        load_weights(model, {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, "x.pt")
    with pytest.raises(KilnError, match="'bias' is missing"):
        load_weights(model, {"weight": torch.zeros(2, 3)}, "x.pt")


def test_atomic_save_leaves_no_temporary(tmp_path):
    save_atomic({"a": torch.zeros(1)}, tmp_path / "x.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]
