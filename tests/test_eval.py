"""``ultrares eval``: tables, CSV and Markdown from real images, real video and real checkpoints."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import need_data
from ultrares_stream.cli import main
from ultrares_stream.colour import float_to_uint8, uint8_to_float
from ultrares_stream.models.archs import SRVGGNetCompact
from ultrares_stream.models.checkpoint import save_checkpoint
from ultrares_stream.quality.datasets import load_pairs
from ultrares_stream.quality.evaluate import bicubic_upscale, evaluate

pytestmark = pytest.mark.timeout(180)


def read_rows(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def bench(tmp_path):
    """An HR-only benchmark folder (``bench/HR``) of two smooth random pictures."""
    rng = np.random.default_rng(0)
    hr = tmp_path / "bench" / "HR"
    hr.mkdir(parents=True)
    for name, (w, h) in {"cars": (70, 52), "sign": (48, 64)}.items():
        small = Image.fromarray(rng.integers(0, 256, (h // 6, w // 6, 3), np.uint8))
        small.resize((w, h), Image.BICUBIC).save(hr / f"{name}.png")
    return hr


def test_help_explains_the_protocol(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--dataset", "--model", "--alpha", "--traffic", "--out-dir", "Y channel", "H.264"):
        assert needle in text


def test_bicubic_table_csv_and_markdown(bench, tmp_path):
    out = tmp_path / "out"
    assert main(["eval", "--dataset", str(bench), "--bicubic-only", "--out-dir", str(out)]) == 0
    rows = read_rows(out / "eval.csv")
    assert [(r["dataset"], r["method"], r["images"]) for r in rows] == [("bench", "bicubic", "2")]
    expected = evaluate(load_pairs(bench, 4), lambda lr: bicubic_upscale(lr, 4), 4)
    assert float(rows[0]["psnr"]) == pytest.approx(expected["psnr"], abs=1e-4)
    assert float(rows[0]["ssim"]) == pytest.approx(expected["ssim"], abs=1e-5)
    per_image = read_rows(out / "eval_per_image.csv")
    assert [r["name"] for r in per_image] == ["cars", "sign"]
    md = (out / "eval.md").read_text()
    assert "| dataset | method | alpha | PSNR-Y (dB) |" in md
    assert f"| bench | bicubic | - | {expected['psnr']:.2f} |" in md
    assert "LR by MATLAB-compatible bicubic" in md


def _tiny_net(seed: int) -> SRVGGNetCompact:
    torch.manual_seed(seed)
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.3)  # small random residual on top of the nearest-upsampled input
    return net


def test_pair_rows_follow_alpha(bench, tmp_path):
    nets = {"psnr": _tiny_net(1), "gan": _tiny_net(2)}
    for name, net in nets.items():
        save_checkpoint(net.state_dict(), tmp_path / f"{name}.safetensors")
    spec = f"{tmp_path / 'psnr.safetensors'}+{tmp_path / 'gan.safetensors'}"
    out = tmp_path / "out"
    assert main(["eval", "--dataset", str(bench), "--model", spec, "--alpha", "0", "--alpha", "1",
                 "--device", "cpu", "--grid", "cars", "--out-dir", str(out)]) == 0
    rows = read_rows(out / "eval.csv")
    assert [(r["method"], r["alpha"]) for r in rows] == [("bicubic", ""), ("psnr+gan", "0"), ("psnr+gan", "1")]
    pairs = load_pairs(bench, 4)
    for row, net in zip(rows[1:], nets.values()):
        def run(lr, net=net):
            with torch.no_grad():
                return float_to_uint8(net(uint8_to_float(torch.from_numpy(lr))).clamp(0, 1))[0].numpy()
        expected = evaluate(pairs, run, 4)
        assert float(row["psnr"]) == pytest.approx(expected["psnr"], abs=1e-3), row
        assert float(row["delta_psnr"]) == pytest.approx(expected["psnr"] - float(rows[0]["psnr"]), abs=2e-3)
    assert rows[1]["psnr"] != rows[2]["psnr"]
    # picture grid: bicubic, alpha 0, alpha 1, original, side by side at 1:1 under 18 px of labels
    grid = np.asarray(Image.open(out / "grid_bench_cars.png"))
    hr = dict((n, h) for n, _, h in pairs)["cars"]  # 68x52 after the crop to a multiple of 4
    assert grid.shape == (52 + 18, 4 * 68 + 3 * 4, 3)
    assert np.array_equal(grid[18:, 3 * 72:], hr)
    assert np.array_equal(grid[18:, :68], bicubic_upscale(dict((n, l_) for n, l_, _ in pairs)["cars"], 4))


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "{tmp}/nowhere"], "dataset not found"),
    (["--dataset", "{bench}", "--alpha", "1.5"], "alpha must be between 0"),
    (["--dataset", "{bench}", "--bicubic-only", "--bitrate", "x", "--traffic"], "no video files"),
    (["--dataset", "{bench}", "--model", "{tmp}/missing.pth"], "checkpoint file not found"),
    (["--dataset", "{bench}", "--bicubic-only", "--model", "x"], "exclude each other"),
    (["--dataset", "{bench}", "--bicubic-only", "--grid", "nope"], "no such image or clip"),
    (["--dataset", "{bench}", "--bicubic-only", "--grid", "cars", "--grid-box", "1,2"], "X,Y,W,H"),
])
def test_bad_input_is_a_one_line_error(bench, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, bench=bench) for a in argv]
    assert main(["eval", *argv, "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ultrares eval: error:") and message in err and "\n" not in err


def test_model_scale_must_match(bench, tmp_path, capsys):
    save_checkpoint(_tiny_net(3).state_dict(), tmp_path / "x4.safetensors")
    argv = ["eval", "--dataset", str(bench), "--scale", "2", "--model", str(tmp_path / "x4.safetensors"),
            "--device", "cpu", "--out-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "use --scale 4" in capsys.readouterr().err


@pytest.mark.timeout(900)  # the real-size evaluation; slow on a busy 2-core machine
def test_set5_and_traffic_with_the_real_esrgan_checkpoint(tmp_path):
    set5, video = need_data("sr", "Set5"), need_data("video")
    weights = need_data("weights", "realesr-animevideov3.pth")
    out = tmp_path / "out"
    assert main(["eval", "--dataset", str(set5), "--dataset", str(video), "--frames-per-clip", "1",
                 "--model", str(weights), "--device", "cpu", "--out-dir", str(out)]) == 0
    rows = {(r["dataset"], r["method"]): r for r in read_rows(out / "eval.csv")}
    assert set(rows) == {("Set5", "bicubic"), ("Set5", "realesr-animevideov3"),
                         ("video (H.264)", "bicubic"), ("video (H.264)", "realesr-animevideov3")}
    assert round(float(rows["Set5", "bicubic"]["psnr"]), 2) == 28.42  # the published anchor
    assert rows["video (H.264)", "bicubic"]["images"] == "5"  # one frame per clip
    for (dataset, method), r in rows.items():
        assert 15 < float(r["psnr"]) < 40 and 0.3 < float(r["ssim"]) < 1, r
        if method != "bicubic":
            base = float(rows[dataset, "bicubic"]["psnr"])
            assert float(r["delta_psnr"]) == pytest.approx(float(r["psnr"]) - base, abs=2e-3)
            # a GAN-family net restores more gradient energy than bicubic
            assert float(r["sharpness"]) > float(rows[dataset, "bicubic"]["sharpness"])
    md = (out / "eval.md").read_text()
    assert "| Set5 | realesr-animevideov3 | - |" in md and "H.264 (libx264)" in md
    assert not math.isnan(float(rows["Set5", "realesr-animevideov3"]["sharpness"]))


def test_dataset_labels_say_how_the_lr_was_made(tmp_path):
    from ultrares_stream.commands.eval import dataset_label

    assert dataset_label(tmp_path / "Set14" / "HR", traffic=False) == "Set14"
    assert dataset_label(tmp_path / "video", traffic=True) == "video (H.264)"
    assert dataset_label(tmp_path / "video", traffic=True, encoded=False) == "video (no H.264)"


# ------------------------------------------------------------------ --task plates-clip

def test_plates_clip_gap_table_and_buckets():
    from ultrares_stream.quality.plates_clip import BUCKETS, ClipProtocol, bucket, gap_table, markdown

    protocol = ClipProtocol(counts=(1, 16), bitrates=("lossless",), true_motion=False)
    rows = []
    for width, acc in ((60, 0.2), (100, 0.6)):
        rows += [{"image": f"p{width}", "width": width, "truth": "AB12", "bitrate": "-", "method": "original",
                  "n": 1, "accuracy": 1.0},
                 {"image": f"p{width}", "width": width, "truth": "AB12", "bitrate": "lossless", "method": "bicubic",
                  "n": 1, "accuracy": 0.2, "psnr": 20.0},
                 {"image": f"p{width}", "width": width, "truth": "AB12", "bitrate": "lossless", "method": "fusion",
                  "n": 16, "accuracy": acc, "verdict": "unreadable" if width < 80 else "fused", "psnr": acc * 50}]
    table = {(r["method"], r["n"]): r["lossless"] for r in gap_table(rows, protocol)}
    assert table[("fusion", 16)] == pytest.approx((0.4, 0.25))  # (0.4 - 0.2) / (1 - 0.2)
    assert table[("bicubic", 1)] == pytest.approx((0.2, 0.0))
    by_width = {(r["method"], r["n"]): r["lossless"] for r in gap_table(rows, protocol, (80, 120))}
    assert by_width[("fusion", 16)] == pytest.approx((0.6, 0.5))
    assert [bucket(w) for w in (10, 80, 119, 120)] == ["< 80 px", "80-120 px", "80-120 px", ">= 120 px"]
    text = markdown(rows, protocol, [0.2, 0.3])
    assert "| fusion | 16 | +25 % (0.400) |" in text and BUCKETS[1][2] in text and "median 0.250 s" in text
    assert "| lossless | 1 of 2 | 0.200 | 0.600 |" in text  # the unreadable verdict's share and worth
    assert "| fusion | 16 | 20.00 |" in text and "| bicubic | 1 | 20.00 |" in text  # mean of 10 and 30 dB


def test_scene_passes_follow_the_demo_scenes_plates_in_their_own_motion():
    from ultrares_stream.demo.scene import render_scene_frame
    from ultrares_stream.quality.plates_clip import ClipProtocol, scene_passes, scene_starts

    protocol = ClipProtocol(counts=(1, 16))
    (start, passes), = scene_passes(scene_starts(2)[1:], protocol, (640, 480))
    assert start == 50 and passes
    boxes: list = []
    first = render_scene_frame(start, 640, 480, plates=boxes)
    for p in passes:
        assert len(p.frames) == 16 and p.frames[0].shape == (120, 160, 3) and p.warps is None
        assert np.array_equal(p.picture, first)
        assert (*p.box, p.text) in [(x, y, w, h, t.replace(" ", "")) for x, y, w, h, t in boxes]
    moved = np.abs(passes[0].frames[15].astype(int) - passes[0].frames[0].astype(int)).mean()
    assert moved > 1.0  # the vehicles moved: a real pass, not one frame repeated


def test_plates_clip_window_and_box_stay_aligned():
    from ultrares_stream.quality.plates_clip import lr_box, pass_window

    image = np.zeros((500, 900, 3), np.uint8)
    window, inner = pass_window(image, (850, 470, 40, 20), 4)
    assert window.shape == (384, 640, 3)
    assert inner[0] + inner[2] <= 640 and inner[1] + inner[3] <= 384 and inner[2:] == (40, 20)
    x, y, w, h = lr_box(inner, 4, (96, 160))
    assert x * 4 <= inner[0] and y * 4 <= inner[1]
    assert (x + w) * 4 >= inner[0] + inner[2] and (y + h) * 4 >= inner[1] + inner[3]


def test_eval_plates_clip_command(tmp_path):
    """The whole protocol on two of the demo scene's plates (real H.264, real OCR), bicubic only."""
    pytest.importorskip("rapidocr_onnxruntime")
    from ultrares_stream.demo.scene import render_scene_frame

    folder = tmp_path / "plates"
    folder.mkdir()
    boxes: list = []
    Image.fromarray(render_scene_frame(90, 640, 480, plates=boxes)).save(folder / "scene.png")
    (folder / "scene.txt").write_text("".join(f"scene.png\t{x}\t{y}\t{w}\t{h}\t{t.replace(' ', '')}\n"
                                              for x, y, w, h, t in boxes[:2]))
    out = tmp_path / "out"
    assert main(["eval", "--task", "plates-clip", "--dataset", str(folder), "--bicubic-only",
                 "--limit", "2", "--scene-windows", "1", "--out-dir", str(out)]) == 0
    md = (out / "plates_clip.md").read_text()
    assert "2 plates" in md and "| fusion | 16 |" in md and "| temporal mean | 16 |" in md
    photos, scene = md.split("## The demo scene's plates in their own motion")
    assert "| fusion | 16 |" in scene and "true motion" not in scene  # the scene's motion is not known
    assert "16-frame fusion (tracking included), one thread" in md
    rows = read_rows(out / "plates_clip.csv")
    assert {r["bitrate"] for r in rows} == {"-", "lossless", "0.3bpp", "0.1bpp"}
    assert {r["image"] for r in rows if r["image"].startswith("scene@")} == {"scene@0"}
    assert {r["method"] for r in rows} == {"original", "bicubic", "temporal mean", "fusion", "classical fusion",
                                           "fusion, true motion"}
    assert {r["verdict"] for r in rows if r["method"] == "fusion"} <= {"fused", "unreadable"}
