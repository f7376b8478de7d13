"""Extraction on real-format media (bench/real_format_media.py): MTCNN on a bounded-resolution copy finds a
real photograph's face in a 720p frame and maps its box back; seeking a multi-minute DivX-family AVI
returns the frames that decoding from the start gives."""
from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from ercpipe.features import visual
from ercpipe.io import media

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import real_format_media as rfm  # noqa: E402  (bench/, a test and benchmark helper)


@pytest.fixture(scope="module")
def detector():
    torch.set_num_threads(1)
    return visual.build_detector({}, "cpu")


def test_the_detection_copy_is_bounded_and_frames_at_the_bound_are_used_as_they_are():
    assert visual.detection_size(1280, 720, 640) == (640, 360)
    assert visual.detection_size(720, 480, 640) == (640, 427)
    assert visual.detection_size(640, 360, 640) == (640, 360)  # the demo's frames: unchanged
    assert visual.detection_size(1920, 1080, None) == (1920, 1080)
    # The default keeps every frame of IEMOCAP's and the synthetic corpora's sizes as it is; MELD's 720p is reduced.
    assert visual.DEFAULT_SETTINGS["detect_max_side"] == 720
    assert visual.detection_size(720, 480, 720) == (720, 480) and visual.detection_size(1280, 720, 720) == (720, 405)
    for bad in (0, -1, 2.5, True, "640"):
        with pytest.raises(ValueError, match="detect_max_side"):
            visual.detect_max_side({"detect_max_side": bad})


def test_a_real_photographs_face_in_a_720p_frame_is_found_and_mapped_back(detector):
    photo = rfm.photo("astronaut")
    native = visual.detect_faces(detector, [photo])[0]
    assert len(native) == 1 and native[0].prob > 0.99
    scale, x0, y0 = 1.25, 533, 71  # odd offsets: no alignment with the 2x reduction helps
    frame = rfm.photo_in_frame("astronaut", scale, x0, y0)
    expected_box = native[0].box * scale + np.array([x0, y0, x0, y0], dtype=np.float32)
    expected_landmarks = native[0].landmarks * scale + np.array([x0, y0], dtype=np.float32)

    faces = visual.detect_faces(detector, [frame], max_side=640)[0]  # a 640x360 copy (2x reduction)
    assert len(faces) == 1 and faces[0].prob > 0.99
    box_error = np.abs(faces[0].box - expected_box)
    # A face 110 px wide in a 2x reduced copy: MTCNN's own jitter between scales is a few pixels.
    assert box_error.max() < 6, (faces[0].box, expected_box)
    assert np.abs(faces[0].landmarks - expected_landmarks).max() < 6
    default = visual.detect_faces(detector, [frame], max_side=visual.DEFAULT_SETTINGS["detect_max_side"])[0]
    assert len(default) == 1 and np.abs(default[0].box - expected_box).max() < 6  # the default: a 720x405 copy
    full = visual.detect_faces(detector, [frame], max_side=None)[0]  # at full resolution, for comparison
    assert len(full) == 1 and np.abs(full[0].box - faces[0].box).max() < 6

    # The crop is cut from the full-resolution frame: it matches the crop from full-resolution detection.
    crop = visual.align_face(frame, faces[0], 224, 0.2)
    reference = visual.align_face(frame, full[0], 224, 0.2)
    assert crop.shape == (224, 224, 3)
    assert np.abs(crop.astype(float) - reference.astype(float)).mean() < 20


def test_the_speakers_face_of_a_meld_like_720p_clip_is_cropped_at_full_resolution(detector, tmp_path):
    clip = rfm.write_meld_clip(tmp_path / "dia0_utt0.mp4", seconds=1.0, n_faces=3)
    with av.open(str(clip)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert (container.streams.video[0].width, container.streams.video[0].height) == (1280, 720)
        audio = container.streams.audio[0]
        assert (audio.codec_context.name, audio.sample_rate, audio.layout.name) == ("aac", 48000, "stereo")
    frames = visual.sample_frames(clip, None, None, 2.0, 16)
    faces = visual.detect_faces(detector, frames, max_side=visual.DEFAULT_SETTINGS["detect_max_side"])
    assert all(len(f) == 3 for f in faces)  # all three photographed faces, in every frame
    speaker = visual.select_face(faces[0], 1280, 720, "speaker0", {"mode": "largest_central"})
    assert abs((speaker.box[0] + speaker.box[2]) / 2 - 640) < 40  # the large central photograph
    crops = visual.utterance_face_crops(clip, None, None, "speaker0", {}, {"mode": "largest_central"},
                                        detector=detector)
    assert len(crops) == len(frames) and crops[0].shape == (224, 224, 3)


class _CountingContainer:
    """av.open's container, counting the frames it decodes and the seeks asked of it."""

    def __init__(self, container, log: dict):
        self._container, self._log = container, log

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._container, name)

    def seek(self, *args, **kwargs):
        self._log["seeks"] += 1
        return self._container.seek(*args, **kwargs)

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self._log["decoded"] += 1
            yield frame


@pytest.fixture(scope="module")
def long_avi(tmp_path_factory):
    # Multi-minute, IEMOCAP's codec family, frame rate and keyframe spacing (a smaller picture keeps it quick).
    path = tmp_path_factory.mktemp("avi") / "Ses01F_impro01.avi"
    return rfm.write_iemocap_avi(path, seconds=150.0, size=(320, 240), gop=300)


def test_seeking_deep_into_a_multi_minute_avi_returns_the_frames_decoded_from_the_start(long_avi, monkeypatch):
    with av.open(str(long_avi)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_tag) == ("mpeg4", "DX50")
        assert container.duration / av.time_base > 149
    lo, hi, fps = 131.37, 134.9, 2.0  # not on a keyframe (every 10 s)
    reference = rfm.decode_from_start(long_avi, lo, hi, fps)
    assert len(reference) == 7

    log = {"seeks": 0, "decoded": 0}
    real_open = av.open
    monkeypatch.setattr(media.av, "open", lambda *a, **k: _CountingContainer(real_open(*a, **k), log))
    sought = list(media.iter_frames(long_avi, lo, hi, fps=fps))
    assert log["seeks"] == 1
    # From the keyframe before the window: at most one keyframe interval (300) plus the window's frames.
    assert log["decoded"] <= 300 + int((hi - lo) * 30) + 2, log
    assert [t for t, _ in sought] == [t for t, _ in reference]
    for (_, a), (_, b) in zip(sought, reference):
        np.testing.assert_array_equal(a, b)

    # What the visual extractor samples (thinned to max_frames) equals the reference's selection too.
    monkeypatch.setattr(media.av, "open", real_open)
    timed = visual.sample_timed_frames(long_avi, lo, hi, fps, max_frames=4)
    keep = visual.thinned_indices(len(reference), 4)
    assert [t for t, _ in timed] == [reference[i][0] for i in keep]
    for (_, a), i in zip(timed, keep):
        np.testing.assert_array_equal(a, reference[i][1])


def test_the_iemocap_like_corpus_puts_each_actor_on_the_side_the_rule_maps(detector, long_avi):
    frames = visual.sample_frames(long_avi, 60.0, 61.0, 2.0, 16)
    height, width = frames[0].shape[:2]
    for letter, side in (("F", "left"), ("M", "right")):
        face = visual.select_face(visual.detect_faces(detector, frames[:1])[0], width, height, f"Ses01_{letter}",
                                  rfm.SIDE)
        assert face is not None and ((face.box[0] + face.box[2]) / 2 < width / 2) == (side == "left")


def test_opensmile_in_worker_processes_gives_the_serial_results(tmp_path):
    """threads > 1 runs openSMILE in worker processes: the same vectors, bit for bit, and the same reasons."""
    import pandas as pd

    from ercpipe.features import audio
    from ercpipe.features.interface import ExtractionContext
    from ercpipe.io import features as feature_io

    manifest, audio_dir = rfm.make_iemocap_corpus(tmp_path, 1, seconds=12.0, utterances=5, utterance_seconds=2.0,
                                                  size=(96, 64))
    report = pd.read_csv(audio_dir / "_report.tsv", sep="\t", keep_default_na=False)
    silent = report["utterance_id"][2]
    report.loc[2, ["status", "detail"]] = ["silent_audio", "digital silence"]
    (audio_dir / f"{silent}.wav").unlink()
    report.to_csv(audio_dir / "_report.tsv", sep="\t", index=False)
    context = ExtractionContext(audio_dir=audio_dir)
    audio.extract_shard(manifest, {}, tmp_path / "serial.h5", threads=1, context=context)
    audio.extract_shard(manifest, {}, tmp_path / "processes.h5", threads=3, context=context)
    serial, processes = feature_io.read(tmp_path / "serial.h5"), feature_io.read(tmp_path / "processes.h5")
    assert serial.present.tolist() == processes.present.tolist() == [True, True, False, True, True]
    np.testing.assert_array_equal(serial.features, processes.features)
    assert serial.attrs["absent"] == processes.attrs["absent"] and silent in serial.attrs["absent"]
