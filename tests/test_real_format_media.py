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


def test_an_mp4_cut_short_after_its_index_is_not_decodable(tmp_path):
    """An MP4 with its index first ("faststart") that lost its tail opens and decodes its first frame, and
    decoding later just stops early; the probe seeks to the end of what the index lists and finds nothing."""
    complete = tmp_path / "dia0_utt0.mp4"
    with av.open(str(complete), "w", options={"movflags": "faststart"}) as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(30):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
    cut = tmp_path / "dia0_utt1.mp4"
    cut.write_bytes(complete.read_bytes()[: complete.stat().st_size * 2 // 5])
    assert media.probe(complete).decodable and media.probe(complete).error == ""
    info = media.probe(cut)
    assert not info.decodable and info.error.startswith("truncated: its index lists 3.00 s of video")
    assert len(visual.sample_frames(cut, None, None, 10.0, 100)) < 30  # what decoding alone would give
    # Without probing (the readers' default), a window in the lost tail gets no frame, and the extractor says why.
    assert visual.sample_frames(cut, 2.5, 3.0, 2.0, 4) == []
    reason, detail = media.empty_window_problem(cut, 2.5, 3.0, "video")
    assert reason == "corrupt_video" and detail.startswith(f"{cut}: truncated: its index lists 3.00 s of video")


def _write_video(path: Path, size=(96, 64), seconds: float = 10.0, fps: int = 25, fmt: str | None = None,
                 options: dict | None = None, extra_video: tuple[int, int] | None = None) -> Path:
    """H.264 frames, each stamped with its index (rfm.stamp); `extra_video` adds a smaller first stream."""
    with av.open(str(path), "w", format=fmt) as container:
        small = None
        if extra_video:
            small = container.add_stream("libx264", rate=fps)
            small.width, small.height, small.pix_fmt = *extra_video, "yuv420p"
        video = container.add_stream("libx264", rate=fps, options=options or {})
        video.width, video.height, video.pix_fmt = *size, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.full((size[1], size[0], 3), 90, np.uint8)
            rfm.stamp(img, i)
            container.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            if small is not None:
                plain = np.zeros((extra_video[1], extra_video[0], 3), np.uint8)
                container.mux(small.encode(av.VideoFrame.from_ndarray(plain, format="rgb24")))
        container.mux(video.encode())
        if small is not None:
            container.mux(small.encode())
    return path


def test_windows_of_an_mpeg_ts_file_get_the_frames_decoding_from_the_start_gives(tmp_path):
    """In MPEG-TS a seek can land on a keyframe after its target, past the window; the reader then seeks
    further back. Times count from the file's start (a TS clock starts anywhere)."""
    clip = _write_video(tmp_path / "gop.ts", fmt="mpegts", options={"g": "50", "keyint_min": "50", "sc_threshold": "0"})
    for lo, hi in ((1.0, 2.0), (3.0, 4.0), (4.5, 5.5), (7.2, 8.0)):
        got = visual.sample_timed_frames(clip, lo, hi, 2.0, 16)
        want = rfm.decode_from_start(clip, lo, hi, 2.0)
        assert [round(t, 3) for t, _ in got] == [round(t, 3) for t, _ in want] and len(want) == 2, (lo, hi)
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want))


def test_a_phone_videos_display_rotation_is_applied(tmp_path):
    """Phones store a portrait scene sideways and say "rotate 90 degrees clockwise" in the track header."""
    import struct

    upright = np.zeros((64, 32, 3), np.uint8)  # portrait: 32 wide, 64 tall, a white mark at the top left
    upright[:8, :8] = 255
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # 64 wide, 32 tall
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=4, options={"crf": "0"})
        video.width, video.height, video.pix_fmt = 64, 32, "yuv444p"
        for _ in range(4):
            container.mux(video.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        container.mux(video.encode())
    data = bytearray(path.read_bytes())
    matrix = data.find(b"tkhd") + 44  # version-0 track header: the display matrix after 40 bytes of fields
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 32 << 16, 0, 1 << 30)
    path.write_bytes(bytes(data))
    frames = visual.sample_frames(path, None, None, 2.0, 4)
    assert frames[0].shape == (64, 32, 3)
    assert frames[0][:8, :8].mean() > 200 and frames[0][-8:, -8:].mean() < 50


@pytest.mark.parametrize("rotation, shown", [
    ({"degrees": 0, "hflip": True}, lambda img: img[:, ::-1]),  # a mirrored front camera: it came out upside down
    ({"degrees": 0, "vflip": True}, lambda img: img[::-1]),  # it came out as stored
    ({"degrees": 90, "hflip": True}, lambda img: np.rot90(img, 1)[:, ::-1]),
    ({"degrees": 90}, lambda img: np.rot90(img, 1)),
    ({"degrees": 180}, lambda img: np.rot90(img, 2)),
])
def test_a_mirrored_videos_display_matrix_is_applied_as_a_player_does(tmp_path, rotation, shown):
    """PyAV's frame.rotation reads a mirror as a half turn; the whole display matrix says what a player shows: the
    stored picture turned counterclockwise by `degrees`, then mirrored."""
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:16, :32] = (255, 0, 0)  # red top left, blue top right, black bottom
    stored[:16, 32:] = (0, 0, 255)
    path = tmp_path / "matrix.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=4, options={"crf": "0"})
        video.width, video.height, video.pix_fmt = 64, 32, "yuv444p"
        video.set_display_rotation(**rotation)
        for _ in range(4):
            container.mux(video.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        container.mux(video.encode())
    (frame,) = visual.sample_frames(path, None, None, 1.0, 1)
    expected = shown(stored)
    assert frame.shape == expected.shape
    assert np.abs(frame.astype(int) - expected).max() < 40


@pytest.mark.parametrize("aspect, shape", [(2, (32, 128)), (0.5, (64, 64))])
def test_an_anamorphic_videos_pixels_are_stretched_to_the_shape_a_player_shows(tmp_path, aspect, shape):
    """A DVD or broadcast source stores non-square pixels (sample aspect ratio); its faces were taken squeezed."""
    from fractions import Fraction

    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32] = 255  # the left half white: it stays the left half once stretched
    path = tmp_path / "anamorphic.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=4, options={"crf": "0"})
        video.width, video.height, video.pix_fmt = 64, 32, "yuv444p"
        video.sample_aspect_ratio = Fraction(aspect)
        for _ in range(4):
            container.mux(video.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        container.mux(video.encode())
    frame = visual.sample_frames(path, None, None, 2.0, 4)[0]
    assert frame.shape == (*shape, 3)
    half = frame.shape[1] // 2
    assert frame[:, :half - 2].mean() > 240 and frame[:, half + 2:].mean() < 15


def test_the_picture_stream_is_the_largest_and_a_tiny_picture_has_no_face(detector, tmp_path):
    clip = _write_video(tmp_path / "two.mkv", size=(160, 120), seconds=1.0, extra_video=(32, 24))
    frames = visual.sample_frames(clip, None, None, 2.0, 4)
    assert frames[0].shape == (120, 160, 3)
    tiny = _write_video(tmp_path / "tiny.mp4", size=(16, 16), seconds=1.0)
    frames = visual.sample_frames(tiny, None, None, 2.0, 4)
    assert visual.detect_faces(detector, frames, max_side=None) == [[], []]  # MTCNN itself fails on these


def test_a_raw_h264_stream_without_timestamps_is_timed_by_its_frame_rate(tmp_path):
    """A camera's or DVR's raw .h264 has no timestamps and cannot be seeked: its frames were skipped (the whole
    file had "no frame inside the window") and a window's seek failed as a corrupt video (EPERM)."""
    raw = _write_video(tmp_path / "cam.h264", seconds=4.0, fmt="h264")
    timed = _write_video(tmp_path / "cam.mp4", seconds=4.0)  # the same frames in a container
    for lo, hi in ((None, None), (1.0, 2.0), (2.5, 3.3)):
        got = visual.sample_timed_frames(raw, lo, hi, 2.0, 16)
        want = visual.sample_timed_frames(timed, lo, hi, 2.0, 16)
        assert [round(t, 3) for t, _ in got] == [round(t, 3) for t, _ in want] and got, (lo, hi)
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want)), (lo, hi)


def test_a_window_between_two_frames_takes_the_frame_on_screen(tmp_path):
    """A 1-fps camera: an utterance from 2.3 to 2.8 s had no frame inside its window and got no face, while a
    player shows the frame of second 2 all along. A window past the last frame still has none."""
    clip = _write_video(tmp_path / "slow.mp4", seconds=5.0, fps=1)
    on_screen = visual.sample_timed_frames(clip, 2.0, 2.5, 2.0, 16)
    assert [round(t, 3) for t, _ in on_screen] == [2.0]
    for lo, hi in ((2.3, 2.8), (2.01, 2.99)):
        got = visual.sample_timed_frames(clip, lo, hi, 2.0, 16)
        assert [round(t, 3) for t, _ in got] == [2.0] and np.array_equal(got[0][1], on_screen[0][1]), (lo, hi)
        assert media.count_sampled_frames(clip, lo, hi, 2.0) == 1  # the prediction agrees: no second decoding
    assert visual.sample_timed_frames(clip, 6.0, 7.0, 2.0, 16) == []
    assert media.count_sampled_frames(clip, 6.0, 7.0, 2.0) == 0


def test_an_audio_files_cover_image_is_not_its_video(tmp_path):
    """An MP3's album art is a video stream marked as an attached picture: it was taken as the utterance's
    picture (faces of the cover), or, for a window, the file was called corrupt."""
    from PIL import Image
    import io

    cover = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(cover, format="JPEG")
    path = tmp_path / "song.mp3"
    with av.open(str(path), "w", format="mp3") as container:
        audio = container.add_stream("libmp3lame", rate=44100)
        art = container.add_stream("mjpeg")
        art.width, art.height, art.pix_fmt = 64, 64, "yuvj420p"
        art.disposition = av.stream.Disposition.attached_pic
        packet = av.Packet(cover.getvalue())
        packet.stream, packet.pts, packet.dts, packet.is_keyframe = art, 0, 0, True
        container.mux(packet)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 3 * 44100), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44100
        container.mux(audio.encode(frame))
        container.mux(audio.encode())
    with av.open(str(path)) as container:
        assert container.streams.video[0].disposition & av.stream.Disposition.attached_pic  # what the case is
    info = media.probe(path)
    assert info.decodable and info.has_audio and not info.has_video
    for lo, hi in ((None, None), (1.0, 2.0)):
        with pytest.raises(media.MediaError) as err:
            visual.sample_frames(path, lo, hi, 2.0, 4)
        assert err.value.reason == "no_video"


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


class _FaceLog:
    """Records the faces every utterance's frames got, by the utterance's first frame (visual.crops_from_faces
    is called once per utterance by both paths; the batched one in the order utterances complete)."""

    def __init__(self, monkeypatch):
        import hashlib

        self.faces: dict[str, list[list[visual.Face]]] = {}
        real = visual.crops_from_faces

        def recording(frames, faces_per_frame, *args, **kwargs):
            self.faces[hashlib.sha1(frames[0].tobytes()).hexdigest()] = faces_per_frame
            return real(frames, faces_per_frame, *args, **kwargs)

        monkeypatch.setattr(visual, "crops_from_faces", recording)


def _per_utterance_features(manifest_path, settings: dict, face_selection: dict) -> tuple[np.ndarray, list[bool]]:
    """The per-utterance path: each utterance's frames detected alone (speaker_crops), its crops embedded alone."""
    from ercpipe.io import manifest as manifest_io

    settings = visual.visual_settings(settings)
    detector = visual.build_detector(settings, "cpu")
    embedder = visual.load_embedder(settings, "cpu")
    rows = manifest_io.read(manifest_path)
    feats, present = np.zeros((len(rows), embedder.dim), dtype=np.float32), []
    for i, row in enumerate(rows.itertuples(index=False)):
        if not Path(row.video_path).exists():
            present.append(False)
            continue
        frames = visual.sample_frames(row.video_path, row.video_start, row.video_end, settings["fps"],
                                      settings["max_frames"])
        crops = visual.speaker_crops(frames, row.speaker, settings, face_selection, detector)
        if crops:
            feats[i] = embedder.embed(crops, settings["batch_size"]).mean(axis=0)
        present.append(bool(crops))
    return feats, present


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory):
    """IEMOCAP-like windows (720x480 DivX) and MELD-like clips (1280x720 H.264, detected on a 720x405 copy)
    interleaved in one manifest (speakers named for the side rule), with a row whose video is missing."""
    import pandas as pd

    from ercpipe.io import manifest as manifest_io

    root = tmp_path_factory.mktemp("mixed")
    iemocap, _ = rfm.make_iemocap_corpus(root / "iemocap", 1, seconds=14.0, utterances=4, utterance_seconds=2.0)
    meld = rfm.make_meld_corpus(root / "meld", n_dialogues=1, per_dialogue=2, seconds=1.5)
    a, b = manifest_io.read(iemocap), manifest_io.read(meld)
    b["speaker"] = ["Ses02_F", "Ses02_M"]
    rows = pd.concat([a.iloc[:2], b.iloc[:1], a.iloc[2:3], b.iloc[1:], a.iloc[3:]], ignore_index=True)
    gone = rows.iloc[0].copy()
    gone["utterance_id"], gone["video_path"] = "gone", str(root / "gone.avi")
    rows = pd.concat([rows.iloc[:3], gone.to_frame().T, rows.iloc[3:]], ignore_index=True)
    path = root / "manifest.tsv"
    manifest_io.write(rows, path)
    return path


@pytest.mark.parametrize("batch_size, cpu_max_batch", [(3, 8), (32, 8), (32, 64)])
def test_detection_batched_across_utterances_gives_the_per_utterance_features(mixed_corpus, tmp_path, monkeypatch,
                                                                               batch_size, cpu_max_batch):
    """extract_shard runs MTCNN (and the backbone) on batches spanning utterances and gets every utterance the
    faces and features its frames detected alone and its crops embedded alone give: the same faces with the
    same scores, boxes within float rounding (a frame in a batch of one goes through other oneDNN kernels:
    boxes move by < 1e-4 px), features within 1e-4."""
    from facenet_pytorch import MTCNN

    from ercpipe.features.interface import ExtractionContext
    from ercpipe.io import features as feature_io

    torch.set_num_threads(1)
    settings = {"backbone": "densenet121", "weights": "random", "batch_size": batch_size}
    face_rule = {"mode": "side", "sides": {"F": "left", "M": "right"}}
    alone = _FaceLog(monkeypatch)
    expected, expected_present = _per_utterance_features(mixed_corpus, settings, face_rule)
    monkeypatch.undo()

    calls: list[tuple[int, tuple]] = []
    real_detect = MTCNN.detect

    def counting_detect(self, img, *args, **kwargs):
        calls.append((len(img), tuple(np.asarray(img).shape[1:3])))
        return real_detect(self, img, *args, **kwargs)

    monkeypatch.setattr(MTCNN, "detect", counting_detect)
    monkeypatch.setattr(visual, "CPU_MAX_BATCH", cpu_max_batch)  # 64: batches as large as on CUDA
    batched = _FaceLog(monkeypatch)
    out = tmp_path / "batched.h5"
    visual.extract_shard(mixed_corpus, settings, out, threads=1, device="cpu",
                         context=ExtractionContext(face_selection=face_rule))
    fs = feature_io.read(out)
    assert fs.present.tolist() == expected_present
    assert sum(expected_present) >= 5 and not all(expected_present)  # real faces found; the missing video absent
    assert len(alone.faces) == 6 and batched.faces.keys() == alone.faces.keys()
    for key, utterance_a in alone.faces.items():
        utterance_b = batched.faces[key]
        assert len(utterance_b) == len(utterance_a)
        for faces_b, faces_a in zip(utterance_b, utterance_a):
            assert len(faces_b) == len(faces_a) >= 1
            for b, a in zip(faces_b, faces_a):
                assert abs(b.prob - a.prob) < 1e-5
                assert np.abs(b.box - a.box).max() < 1e-3 and np.abs(b.landmarks - a.landmarks).max() < 1e-3
    np.testing.assert_allclose(fs.features, expected, rtol=1e-4, atol=1e-4)
    # The calls spanned utterances (4 frames per IEMOCAP window, 3 per MELD clip), never held more than the
    # batch (batch_size, at most CPU_MAX_BATCH on the CPU), and only one frame size each (720x480 as it is,
    # 1280x720 on its 720x405 copy).
    batch = min(batch_size, cpu_max_batch)
    assert all(n <= batch for n, _ in calls)
    assert {shape for _, shape in calls} == {(480, 720), (405, 720)}
    sizes = [n for n, _ in calls]
    if batch == 3:
        assert sizes[:4] == [3, 3, 3, 3], calls  # full batches, each ending inside an utterance
    elif batch == 8:
        assert sorted(sizes) == [4, 4, 6, 8], calls  # 2 windows; 2 clips and a window flushed once 8 wait; 1 window
    else:
        assert sorted(sizes) == [6, 16], calls  # one call per frame size
