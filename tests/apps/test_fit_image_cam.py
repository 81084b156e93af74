"""``fit image --encoder ffn --cam``: the run, its learning-rate groups, reopening, and bad flags."""

import json

import torch

import fieldstudio
from fieldstudio.apps.cli import main
from fieldstudio.apps.fit_image import fit_image
from fieldstudio.apps.training import encoder_param_groups
from fieldstudio.fields.image import ImageField, image_field_preset


def test_cam_grid_trains_with_ten_times_the_rate():
    fld = ImageField(image_field_preset("ffn", 3, (32, 32), cam=True), backend="torch")
    groups = encoder_param_groups(fld, 1e-3)
    assert len(groups) == 2 and "lr" not in groups[0]
    assert groups[1]["lr"] == 1e-2 and groups[1]["params"] == [fld.modulation.grid]
    assert encoder_param_groups(ImageField(image_field_preset("ffn", 3, (32, 32)), backend="torch"), 1e-3) is None


def test_ffn_cam_fits_and_reopens(tmp_path):
    torch.manual_seed(0)
    m_cam = fit_image("camera", encoder="ffn", cam=True, crop=32, steps=60, out=tmp_path / "cam", progress=False,
                      device="cpu")
    m_ffn = fit_image("camera", encoder="ffn", crop=32, steps=60, out=tmp_path / "ffn", progress=False, device="cpu")
    assert m_cam["psnr"] > 20.0, m_cam
    assert abs(m_cam["params"] / m_ffn["params"] - 1) < 0.02
    cfg = json.loads((tmp_path / "cam" / "config.json").read_text())
    assert cfg["field"]["modulation"]["otype"] == "CAM" and cfg["train"]["cam"] is True
    run = fieldstudio.load_run(tmp_path / "cam")
    assert float(run.field.modulation.grid.detach()[:, 1].abs().max()) > 0  # beta left its initial 0
    uv = torch.rand(100, 2)
    torch.testing.assert_close(run.field(uv), fieldstudio.load_run(tmp_path / "cam").field(uv), rtol=0, atol=0)


def test_cli_cam_needs_the_ffn_encoder(tmp_path, capsys):
    code = main(["fit", "image", "camera", "--encoder", "hashgrid", "--cam", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--cam" in err and "ffn" in err and "Traceback" not in err


def test_cli_ffn_cam_runs(tmp_path, capsys):
    code = main(["fit", "image", "camera", "--crop", "24", "--steps", "3", "--encoder", "ffn", "--cam",
                 "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 0 and "PSNR" in capsys.readouterr().out
