"""The .fsv codec: quantisation, exact round trips, continual sessions that never change earlier videos,
frozen weights, and damaged files."""

import struct

import numpy as np
import pytest
import torch

from fieldstudio.apps.video_train import train_session
from fieldstudio.codecs import fsv
from fieldstudio.codecs.fsv import VideoLibrary, dequantize, quantize
from fieldstudio.datasets.videos import procedural_clip
from fieldstudio.errors import InputError
from fieldstudio.fields.subnet import masked_tensors
from fieldstudio.fields.video import VideoField, size_config

SIZE = 32


def _clip(seed, frames=4):
    return procedural_clip(frames, SIZE, SIZE, seed=seed)


def _library(bits=8):
    torch.manual_seed(0)
    return VideoLibrary(VideoField(size_config(SIZE, SIZE, 6000)), bits=bits)


@pytest.mark.parametrize("bits", [4, 8, 12])
def test_quantize_is_within_half_a_step_and_decodes_exactly(bits):
    torch.manual_seed(0)
    w = torch.randn(40, 32, 3, 3)  # 288 weights per output channel: one (min, step) each
    sel = torch.rand(40, 32, 3, 3) < 0.6
    codes, stats, deq = quantize(w, sel, bits)
    assert codes.size == int(sel.sum()) and codes.max() <= 2 ** bits - 1
    assert stats.shape == (40, 2)
    step = torch.from_numpy(stats[:, 1]).view(40, 1, 1, 1).expand_as(w)
    assert ((deq - w).abs()[sel] <= step[sel] / 2 + 1e-7).all()
    assert torch.equal(deq[~sel], w[~sel])  # untouched outside the selection
    back = dequantize(codes, stats, sel, tuple(w.shape))
    assert torch.equal(back[sel], deq[sel])


def test_round_trip_reproduces_the_trained_network_frames_exactly(tmp_path):
    lib = _library()
    clip = _clip(0, 5)
    r = train_session(lib, clip, name="a", steps=20, capacity=1.0, prune=0.3, progress=False)
    in_memory = lib.decode(0)
    path = tmp_path / "clip.fsv"
    lib.save(path)
    back = fsv.load(path)
    assert torch.equal(back.decode(0), in_memory)
    # the trained field itself (not only the library's decode path) gives the same frames
    lib.use_video(0)
    with torch.no_grad():
        direct = lib.field(torch.arange(5, dtype=torch.float32) / 5, 0)
    assert torch.equal(direct, in_memory)
    assert r["bpp"] > 0 and back.videos[0]["metrics"]["psnr"] == r["psnr"]
    # pruning removed 30% of the weights of every tensor
    for name, m in back.masks[0].items():
        n = m.numel()
        assert int(m.sum()) == n - round(0.3 * n), name


def test_after_session_3_videos_1_and_2_decode_bit_identically(tmp_path):
    lib = _library()
    decoded, files = [], []
    for s in range(3):
        train_session(lib, _clip(s), name=f"v{s}", steps=12, capacity=0.4, prune=0.2, seed=s, progress=False)
        decoded.append(lib.decode(s))
        files.append(lib.to_bytes())
    for j in range(3):
        assert torch.equal(lib.decode(j), decoded[j]), j
    reread = VideoLibrary.from_bytes(files[-1])
    for j in range(3):
        assert torch.equal(reread.decode(j), decoded[j]), j
    # session 1 is stored byte for byte the same in the first and the last file
    assert reread.chunks[0] == VideoLibrary.from_bytes(files[0]).chunks[0]
    # later sessions reused frozen weights and added new ones
    m = [v["metrics"] for v in lib.videos]
    assert m[1]["reused_weights"] > 0 and m[2]["new_weights"] > 0


def test_frozen_weights_have_zero_gradient_and_do_not_move():
    lib = _library()
    train_session(lib, _clip(0), name="a", steps=10, capacity=0.5, prune=0.0, progress=False)
    used = lib.used()
    before = {n: getattr(layer, a).detach().clone() for n, layer, a in masked_tensors(lib.field)}
    train_session(lib, _clip(1), name="b", steps=10, capacity=0.5, prune=0.0, seed=1, progress=False)
    some_grad = False
    for n, layer, a in masked_tensors(lib.field):
        p = getattr(layer, a)
        assert p.grad is not None
        assert torch.count_nonzero(p.grad[used[n]]) == 0, n
        some_grad |= bool(torch.count_nonzero(p.grad[~used[n]]))
        assert torch.equal(p.detach()[used[n]], before[n][used[n]]), n
    assert some_grad  # the free weights did train


def test_flipped_byte_truncation_newer_version_and_garbage_are_detected(tmp_path):
    lib = _library()
    train_session(lib, _clip(0), name="a", steps=3, progress=False)
    data = bytearray(lib.to_bytes())
    for pos in (len(data) // 2, 12, len(data) - 40):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(InputError, match="checksum mismatch"):
            VideoLibrary.from_bytes(bytes(bad))
    with pytest.raises(InputError, match="checksum|truncated"):
        VideoLibrary.from_bytes(bytes(data[:-100]))
    newer = bytearray(data)
    struct.pack_into("<H", newer, 4, fsv.FORMAT_VERSION + 1)
    with pytest.raises(InputError, match="upgrade fieldstudio"):
        VideoLibrary.from_bytes(bytes(newer))
    with pytest.raises(InputError, match="not a fieldstudio video file"):
        VideoLibrary.from_bytes(b"\x89PNG....." * 10)


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    lib = _library()
    train_session(lib, _clip(0), name="a", steps=3, progress=False)
    path = tmp_path / "c.fsv"
    lib.save(path)
    old = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(fsv.os, "replace", boom)
    with pytest.raises(OSError):
        lib.save(path)
    assert path.read_bytes() == old


def test_quantisation_ranges_follow_the_tensor_shape():
    torch.manual_seed(0)
    for shape, n_ranges in (((64, 32, 3, 3), 64),   # conv: one range per output channel
                            ((1584, 40), 40),        # stem rows are short: one range per input
                            ((16, 4, 3, 3), 1),      # small tensor: one range
                            ((50,), 1)):             # bias
        w = torch.randn(shape)
        codes, stats, deq = quantize(w, torch.ones(shape, dtype=torch.bool), 8)
        assert stats.shape == (n_ranges, 2), shape
        assert torch.equal(dequantize(codes, stats, torch.ones(shape, dtype=torch.bool), shape), deq)
