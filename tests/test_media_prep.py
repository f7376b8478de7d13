"""Utterance audio step: 16 kHz mono WAVs per shard, a report row for every utterance, atomic output."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import python_as_a_user
from ercpipe.datasets.build import build_manifest
from ercpipe.datasets.media_prep import REPORT_NAME, write_utterance_audio
from ercpipe.io import manifest as manifest_io
from ercpipe.io import media
from ercpipe.io.media import SAMPLE_RATE, write_wav


def write_clip(path: Path, seconds: float = 1.0, audio: bool = True, silent: bool = False) -> None:
    """H.264 + 48 kHz stereo AAC, like MELD's clips."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=8)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = container.add_stream("aac", rate=48000, layout="stereo") if audio else None
        for i in range(int(seconds * 8)):
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), "rgb24")))
        container.mux(video.encode(None))
        if sound is not None:
            n = int(seconds * 48000)
            tone = np.zeros(n, np.float32) if silent else \
                (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)).astype(np.float32)
            for start in range(0, n, 1024):
                chunk = np.stack([tone[start:start + 1024]] * 2)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 48000, start
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    t = np.arange(3 * 44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 500 * t)], axis=1) * 0.25
    sf.write(str(root / "long.wav"), stereo.astype(np.float32), 44100)
    write_clip(root / "clip.mp4")
    write_clip(root / "silent.mp4", silent=True)
    write_clip(root / "mute.mp4", audio=False)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 4)
    lines = [
        "dialogue_id,utterance_id,split,speaker,label,text,audio_path,audio_start,audio_end",
        "d2,gone,test,A,calm,missing,gone.wav,,",
        "d2,silent,test,A,calm,silent,silent.mp4,,",
        "d2,mute,test,A,calm,no track,mute.mp4,,",
        "d2,broken,test,A,calm,corrupt,broken.mp4,,",
        "d2,nopath,test,A,calm,no path,,,",
        "d1,win,train,A,calm,window,long.wav,0.5,1.75",
        "d1,whole,train,B,calm,whole file,long.wav,,",
        "d1,mp4,train,A,calm,clip,clip.mp4,,",
    ]
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    build_manifest("media", {"format": "csv", "manifest": str(root / "m.csv"), "classes": ["calm", "other"]},
                   root / "features")
    return root / "features" / "manifest.tsv"


@pytest.fixture(scope="module")
def shards(manifest) -> list[Path]:
    out = []
    for shard in range(2):
        out_dir = manifest.parent / "media" / "audio" / f"shard{shard}"
        write_utterance_audio(manifest, shard, 2, out_dir, threads=2)
        out.append(out_dir)
    return out


def report_of(shards: list[Path]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(d / REPORT_NAME, sep="\t", dtype=str, keep_default_na=False) for d in shards])


def test_every_row_reported_once_with_status(manifest, shards):
    report = report_of(shards).set_index("utterance_id")
    assert sorted(report.index) == sorted(manifest_io.read(manifest)["utterance_id"])
    assert report["status"].to_dict() == {
        "win": "ok", "whole": "ok", "mp4": "ok", "gone": "missing_audio", "silent": "silent_audio",
        "mute": "no_audio_stream", "broken": "corrupt_audio", "nopath": "missing_audio"}
    assert "gone.wav" in report.loc["gone", "detail"] and "digital silence" in report.loc["silent", "detail"]
    # The shards follow the manifest's dialogue shards: d2 in shard 0, d1 in shard 1.
    assert manifest_io.dialogue_shards(manifest_io.read(manifest), 2) == [["d2"], ["d1"]]
    second = pd.read_csv(shards[1] / REPORT_NAME, sep="\t")
    assert second["utterance_id"].tolist() == ["win", "whole", "mp4"]


def test_wavs_only_for_ok_rows_16k_mono_with_exact_window(shards):
    wavs = sorted(p.name for d in shards for p in d.glob("*.wav"))
    assert wavs == ["mp4.wav", "whole.wav", "win.wav"]
    for name, seconds in (("win.wav", 1.25), ("whole.wav", 3.0)):
        info = sf.info(str(shards[1] / name))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert info.frames == pytest.approx(seconds * 16000, abs=2)
    signal, _ = sf.read(str(shards[1] / "mp4.wav"))
    assert abs(signal.size - 16000) < 1100 and np.abs(signal).max() > 0.1  # AAC priming adds < 1024 samples
    # Stereo is mixed down: the 300 Hz and 500 Hz channels both show up in the spectrum.
    win, _ = sf.read(str(shards[1] / "win.wav"))
    spectrum = np.abs(np.fft.rfft(win))
    freqs = np.fft.rfftfreq(win.size, 1 / 16000)
    peaks = sorted(freqs[np.argsort(spectrum)[-2:]].round())
    assert peaks == [300, 500]


def test_output_dir_is_replaced_atomically(manifest, tmp_path):
    out = tmp_path / "shard1"
    out.mkdir()
    (out / "stale.wav").write_bytes(b"old")
    write_utterance_audio(manifest, 1, 2, out, threads=1)
    assert sorted(p.name for p in out.iterdir()) == [REPORT_NAME, "mp4.wav", "whole.wav", "win.wav"]
    assert [p.name for p in tmp_path.iterdir()] == ["shard1"]  # no temporary directory left behind


def test_an_audio_file_the_user_may_not_read_stops_the_job_naming_it(tmp_path):
    """The CSV reader does not open media by default: an unreadable file reached extraction, became zeros with
    corrupt_audio, and stayed so after a chmod (which changes neither size nor mtime, so nothing re-ran)."""
    t = np.arange(16000) / 16000
    sf.write(str(tmp_path / "a.wav"), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    (tmp_path / "m.csv").write_text("dialogue_id,utterance_id,split,speaker,label,text,audio_path\n"
                                    "d1,u1,train,A,calm,hi,a.wav\n")
    build_manifest("media", {"format": "csv", "manifest": str(tmp_path / "m.csv"), "classes": ["calm", "other"],
                             "modalities": ["text", "audio"]}, tmp_path / "features")
    (tmp_path / "a.wav").chmod(0)
    try:
        result = python_as_a_user(
            "from ercpipe.datasets.media_prep import write_utterance_audio\n"
            f"write_utterance_audio({str(tmp_path / 'features' / 'manifest.tsv')!r}, 0, 1, {str(tmp_path / 'out')!r})")
    finally:
        (tmp_path / "a.wav").chmod(0o644)
    assert result.returncode != 0 and not (tmp_path / "out").exists()
    assert f"ManifestError: cannot read {tmp_path / 'a.wav'}: permission denied" in result.stderr


def test_a_row_whose_times_could_not_be_read_from_a_shared_recording_is_reported_as_such(tmp_path):
    t = np.arange(3 * 16000) / 16000
    sf.write(str(tmp_path / "call.wav"), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    (tmp_path / "m.csv").write_text("dialogue_id,utterance_id,split,speaker,label,text,audio_path,audio_start,audio_end\n"
                                    "d1,u1,train,A,calm,hi,call.wav,0.0,1.0\n"
                                    'd1,u2,train,B,calm,yo,call.wav,"1,5",2.5\n')
    build_manifest("media", {"format": "csv", "manifest": str(tmp_path / "m.csv"), "classes": ["calm", "other"],
                             "modalities": ["text", "audio"]}, tmp_path / "features")
    write_utterance_audio(tmp_path / "features" / "manifest.tsv", 0, 1, tmp_path / "out")
    report = pd.read_csv(tmp_path / "out" / REPORT_NAME, sep="\t").set_index("utterance_id")
    assert report["status"].to_dict() == {"u1": "ok", "u2": "bad_time"}
    assert report.loc["u2", "detail"] == "no usable times to cut the audio (issues.tsv says why)"


def test_empty_shard_writes_empty_report(manifest, tmp_path):
    write_utterance_audio(manifest, 4, 5, tmp_path / "shard4")  # more shards than dialogues
    report = pd.read_csv(tmp_path / "shard4" / REPORT_NAME, sep="\t")
    assert list(report.columns) == ["utterance_id", "status", "detail"] and report.empty


def _burst(rate: int, seconds: float = 2.0, at: float = 1.0, amp: float = 0.5) -> np.ndarray:
    """Silence with a 20 ms tone burst starting at `at` seconds."""
    signal = np.zeros(int(rate * seconds), np.float32)
    i = int(at * rate)
    signal[i:i + rate // 50] = amp * np.sin(2 * np.pi * 440 * np.arange(rate // 50) / rate)
    return signal


def _onset(signal: np.ndarray, rate: int = 16000) -> float:
    return float(np.argmax(np.abs(signal) > 0.05)) / rate


def _window_report(root: Path, out: Path, start: float, end: float) -> tuple[str, str]:
    """(status, detail) of the utterance-audio step for one row of long.wav (3 s) with these times."""
    (out / "m.csv").parent.mkdir(parents=True, exist_ok=True)
    (out / "m.csv").write_text("dialogue_id,utterance_id,split,speaker,label,text,audio_path,audio_start,audio_end\n"
                               f"d1,u,train,A,calm,x,{root / 'long.wav'},{start},{end}\n")
    build_manifest("w", {"format": "csv", "manifest": str(out / "m.csv"), "classes": ["calm", "other"]},
                   out / "features")
    write_utterance_audio(out / "features/manifest.tsv", 0, 1, out / "audio", threads=1)
    report = pd.read_csv(out / "audio" / REPORT_NAME, sep="\t", keep_default_na=False).set_index("utterance_id")
    return report.at["u", "status"], report.at["u", "detail"]


def test_a_window_after_the_end_of_the_file_says_so(manifest, tmp_path):
    """Times from another clock (MELD's episode times given with a clip) decode to nothing: that was reported as
    silence, which sends a user looking at the recording instead of the times."""
    root = manifest.parent.parent
    status, detail = _window_report(root, tmp_path / "late", 206.5, 208.7)
    assert status == "corrupt_audio"
    assert "starts at 206.5 s, after the end of the file (3.00 s); check its times" in detail
    # An end before the start (flagged bad_time by the reader) is said to be so, not called silence.
    status, detail = _window_report(root, tmp_path / "back", 2.0, 1.0)
    assert "the window [2.0, 1.0) s is empty (its end is not after its start" in detail
    assert status == "bad_time"  # the coverage page counted it as silent audio


def test_channels_are_averaged_not_summed(tmp_path):
    """A loud dual-mono or 5.1 track keeps its level (FFmpeg's own mono downmix adds channels and clips)."""
    from ercpipe.io.media import load_audio

    tone = (0.9 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)).astype(np.float32)
    sf.write(str(tmp_path / "stereo.wav"), np.stack([tone, tone], 1), 16000)
    sf.write(str(tmp_path / "surround.wav"), np.stack([tone] * 6, 1), 16000)
    for name in ("stereo.wav", "surround.wav"):
        mono = load_audio(tmp_path / name)
        np.testing.assert_allclose(mono, tone, atol=1e-4)


def test_non_finite_samples_are_corrupt_audio_not_silence(tmp_path):
    from ercpipe.datasets.media_prep import utterance_audio

    signal = (0.5 * np.sin(2 * np.pi * 220 * np.arange(32000) / 16000)).astype(np.float32)
    signal[100:200] = np.nan
    sf.write(str(tmp_path / "nan.wav"), signal, 16000, subtype="FLOAT")
    row = next(pd.DataFrame([{"utterance_id": "u0", "audio_path": str(tmp_path / "nan.wav"), "audio_start": 0.0,
                              "audio_end": 1.0, "flags": ""}]).itertuples(index=False))  # as the step gets its rows
    status, detail = utterance_audio(row, tmp_path)
    assert status == "corrupt_audio" and "non-finite samples (NaN or inf) at 0.006 s" in detail
    assert not (tmp_path / "u0.wav").exists()


def test_an_mp3_window_is_timed_like_the_whole_file(tmp_path):
    """An MP3's start time is its encoder delay, already removed from the decoded samples: windows count
    from the file's start, as for a WAV (a burst at 1.0 s is at 1.0 s either way)."""
    from ercpipe.io.media import load_audio

    for rate in (8000, 44100):
        path = tmp_path / f"burst{rate}.mp3"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
            signal = _burst(rate)
            for start in range(0, len(signal), 1152):
                frame = av.AudioFrame.from_ndarray(signal[None, start:start + 1152], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = rate, start
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        whole = _onset(load_audio(path))
        assert abs(whole - 1.0) < 0.01, rate
        assert abs(0.5 + _onset(load_audio(path, 0.5, 1.5)) - whole) < 0.002, rate
        assert len(load_audio(path, 0.0, 0.1)) == 1600, rate


def test_a_stream_that_changes_channel_layout_midway_is_read_whole(tmp_path):
    """Broadcast recordings switch layout between programmes (stereo advert, 5.1 film); one resampler takes one
    input setup, so this used to fail with "Frame does not match AudioResampler setup" as a traceback."""
    from ercpipe.io.media import load_audio

    rate, length, parts = 48000, 42 * 1152, []  # whole MP2 frames: the second part starts where the first ends
    for n, layout in enumerate(("mono", "stereo")):  # two MPEG-TS segments, timestamps continuing: cat a b
        path = tmp_path / f"part{n}.ts"
        signal = _burst(rate, seconds=length / rate, at=0.5) if n else np.zeros(length, np.float32)
        channels = np.tile(signal, (1 + n, 1))
        with av.open(str(path), "w", format="mpegts") as container:
            stream = container.add_stream("mp2", rate=rate, layout=layout)
            for start in range(0, length, 1152):
                block = (channels[:, start:start + 1152].T.reshape(1, -1) * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(block, format="s16", layout=layout)
                frame.sample_rate, frame.pts = rate, n * length + start
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        parts.append(path.read_bytes())
    (tmp_path / "switch.ts").write_bytes(b"".join(parts))
    whole = load_audio(tmp_path / "switch.ts")
    first, second = load_audio(tmp_path / "part0.ts"), load_audio(tmp_path / "part1.ts")
    assert len(whole) == len(first) + len(second)
    assert abs(_onset(whole) - (len(first) / 16000 + _onset(second))) < 0.002
    window = load_audio(tmp_path / "switch.ts", 1.0, 2.0)
    assert len(window) == 16000 and abs(1.0 + _onset(window) - _onset(whole)) < 0.002


def test_a_wav_flagged_cut_short_gets_no_audio_and_a_window_past_the_end_is_said(manifest, tmp_path):
    """A WAV cut short decodes without an error to part of the utterance: flagged corrupt_audio by the reader, it
    was still decoded and its features stored as present."""
    root = manifest.parent.parent
    whole = (root / "long.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[:int(len(whole) * 0.6)])
    header = "dialogue_id,utterance_id,split,speaker,label,text,audio_path,audio_start,audio_end\n"
    (tmp_path / "m.csv").write_text(header +
                                    f"d1,cut,train,A,calm,x,{tmp_path / 'cut.wav'},,\n"
                                    f"d1,long,train,A,calm,x,{root / 'long.wav'},2.0,9.0\n")
    build_manifest("w", {"format": "csv", "manifest": str(tmp_path / "m.csv"), "classes": ["calm", "other"],
                         "probe_media": True, "modalities": ["text", "audio"]}, tmp_path / "features")
    issues = manifest_io.read_issues(tmp_path / "features/issues.tsv").frame()
    assert issues.loc[issues["utterance_id"] == "cut", "reason"].tolist() == ["corrupt_audio"]
    write_utterance_audio(tmp_path / "features/manifest.tsv", 0, 1, tmp_path / "audio", threads=1)
    report = pd.read_csv(tmp_path / "audio" / REPORT_NAME, sep="\t", keep_default_na=False).set_index("utterance_id")
    assert report.at["cut", "status"] == "corrupt_audio" and "flagged corrupt_audio" in report.at["cut", "detail"]
    assert not (tmp_path / "audio/cut.wav").exists()
    # A window that runs past the end keeps what is there, and says so.
    assert report.at["long", "status"] == "ok" and (tmp_path / "audio/long.wav").exists()
    assert report.at["long", "detail"].startswith("1.000 s: the window [2.0, 9.0) s runs past the end of")
    assert "(3.00 s); check its times" in report.at["long", "detail"]


def test_a_window_late_in_a_long_recording_is_seeked_to_and_gives_the_samples_of_decoding_from_the_start(tmp_path):
    """Windows were decoded from the file's start, once per utterance: quadratic in a session-long recording. The
    seek must not move the window: PCM gives the same samples, AAC the same up to the resampler's phase."""
    from ercpipe.io.media import AUDIO_SEEK_AFTER, MediaError, load_audio

    rng = np.random.default_rng(0)
    seconds = 40
    noise = (0.2 * rng.standard_normal(seconds * 16000)).astype(np.float32)
    noise[100:200] = np.nan  # a damaged stretch: corrupt_audio for the windows that hold it, and only for them
    sf.write(str(tmp_path / "long.wav"), noise, 16000, subtype="FLOAT")
    start, end = 31.25, 33.5
    assert start > AUDIO_SEEK_AFTER
    np.testing.assert_array_equal(load_audio(tmp_path / "long.wav", start, end),
                                  noise[int(start * 16000):int(end * 16000)])
    with pytest.raises(MediaError, match=r"non-finite samples \(NaN or inf\) at 0.006 s"):
        load_audio(tmp_path / "long.wav", 0.0, 1.0)
    # A window decoded from the start past the damage (it used to be corrupt_audio, unlike one read by a seek).
    np.testing.assert_array_equal(load_audio(tmp_path / "long.wav", 1.0, 2.0), noise[16000:32000])
    noise[int(32.0 * 16000)] = np.inf
    sf.write(str(tmp_path / "long.wav"), noise, 16000, subtype="FLOAT")
    with pytest.raises(MediaError, match=r"non-finite samples \(NaN or inf\) at 32.000 s"):  # timed after a seek too
        load_audio(tmp_path / "long.wav", start, end)

    # 48 kHz stereo AAC in an .m4a, a tone whose pitch changes every second (the window's place is audible).
    t = np.arange(seconds * 48000) / 48000
    tone = (0.3 * np.sin(2 * np.pi * (300 + 20 * np.floor(t)) * t)).astype(np.float32)
    with av.open(str(tmp_path / "long.m4a"), "w") as container:
        stream = container.add_stream("aac", rate=48000, layout="stereo")
        for i in range(0, tone.size, 1024):
            frame = av.AudioFrame.from_ndarray(np.stack([tone[i:i + 1024]] * 2), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    whole = load_audio(tmp_path / "long.m4a")
    window = load_audio(tmp_path / "long.m4a", start, end)
    reference = whole[int(round(start * 16000)):int(round(end * 16000))]
    assert abs(window.size - reference.size) <= 1
    n = min(window.size, reference.size)
    assert np.max(np.abs(window[:n] - reference[:n])) < 0.02 and np.corrcoef(window[:n], reference[:n])[0, 1] > 0.999


def test_a_late_window_of_an_ogg_vorbis_recording_is_where_decoding_from_the_start_puts_it(tmp_path):
    """After a seek, FFmpeg's Vorbis frame times are not where their samples are (libvorbis switches block sizes
    at transients): some windows came out 128 samples (8 ms) late, their features a little different."""
    from ercpipe.io.media import AUDIO_SEEK_AFTER, load_audio

    rng = np.random.default_rng(0)
    bursts = np.zeros(40 * 16000, np.float32)  # speech-like: noise bursts and gaps, the transients that switch
    for at in range(0, bursts.size, 4000):
        n = int(rng.integers(800, 3000))
        bursts[at:at + n] = 0.3 * rng.standard_normal(n)
    sf.write(str(tmp_path / "src.wav"), bursts, 16000)
    subprocess.run(["sox", str(tmp_path / "src.wav"), str(tmp_path / "long.ogg")], check=True)  # libvorbis
    whole = load_audio(tmp_path / "long.ogg")
    for start in (7.3, 12.25, 17.7, 20.1, 25.05, 28.9, 31.25, 35.5):  # 20.1 and 25.05 moved
        assert start > AUDIO_SEEK_AFTER
        window = load_audio(tmp_path / "long.ogg", start, start + 2.0)
        np.testing.assert_array_equal(window, whole[int(round(start * 16000)):int(round((start + 2.0) * 16000))])


def test_a_recording_under_a_wav_name_in_another_format_is_judged_by_decoding(tmp_path):
    """An MP3 or AIFF saved as .wav was flagged corrupt_audio ("not a WAV file") when probed, and used when not."""
    from ercpipe.io.media import probe

    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-t", "aiff", str(tmp_path / "aiff.wav"), "synth", "1",
                    "sine", "440"], check=True)
    info = probe(tmp_path / "aiff.wav")
    assert info.decodable and info.has_audio, info.error
    (tmp_path / "text.wav").write_text("not audio at all, just a file with a .wav name" * 20)
    assert not probe(tmp_path / "text.wav").decodable


@pytest.mark.parametrize("project", ["plain", "it's $x é"])
def test_a_damaged_file_is_described_the_same_wherever_the_project_is(tmp_path, monkeypatch, project):
    """The detail names the file as the dataset gives it (relative), in the same words whatever the project's
    folder: PyAV quotes the absolute path with repr, which took double quotes under a folder with a ', and the
    relative path was then left in them (issues.tsv differed between two copies of one project)."""
    from ercpipe.io.media import probe

    folder = tmp_path / project
    (folder / "clips").mkdir(parents=True)
    (folder / "clips" / "bad.mp4").write_bytes(b"not a video at all" * 50)
    monkeypatch.chdir(folder)
    info = probe(Path("clips/bad.mp4"))
    assert not info.decodable
    assert info.error.startswith("InvalidDataError: [Errno 1094995529] Invalid data found when processing input: "
                                 "'clips/bad.mp4'"), info.error
    assert str(tmp_path) not in info.error


def test_a_recording_beyond_full_scale_or_off_its_zero_line_is_said_in_the_report(tmp_path):
    """A float WAV louder than full scale was clipped in the 16-bit WAV, and a DC offset changed the energy
    features more than any lossy codec, both reported as plain ok."""
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.8 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    sf.write(str(tmp_path / "loud.wav"), 3 * tone, SAMPLE_RATE, subtype="FLOAT")
    sf.write(str(tmp_path / "offset.wav"), 0.5 * tone + 0.3, SAMPLE_RATE, subtype="FLOAT")
    sf.write(str(tmp_path / "plain.wav"), tone, SAMPLE_RATE, subtype="FLOAT")
    header = "dialogue_id,utterance_id,split,speaker,label,text,audio_path\n"
    (tmp_path / "m.csv").write_text(header + "".join(f"d1,{name},train,A,calm,x,{tmp_path / name}.wav\n"
                                                     for name in ("loud", "offset", "plain")))
    build_manifest("w", {"format": "csv", "manifest": str(tmp_path / "m.csv"), "classes": ["calm", "other"],
                         "modalities": ["text", "audio"]}, tmp_path / "features")
    write_utterance_audio(tmp_path / "features/manifest.tsv", 0, 1, tmp_path / "audio", threads=1)
    report = pd.read_csv(tmp_path / "audio" / REPORT_NAME, sep="\t", keep_default_na=False).set_index("utterance_id")
    assert (report["status"] == "ok").all()
    assert report.at["loud", "detail"] == ("2.000 s; peak 2.40 beyond full scale, clipped in the 16-bit WAV (the "
                                           "loudest stretches' features change; lower the recording's gain to keep "
                                           "them)")
    assert report.at["offset", "detail"].startswith("2.000 s; DC offset +0.30 of full scale")
    assert report.at["plain", "detail"] == "2.000 s"


def _write_tracks(path: Path, video_frames: int, tracks: list[tuple[float, bool]]) -> None:
    """A Matroska clip: `video_frames` H.264 frames, then one 1-s 48 kHz AAC track per (amplitude, default flag)."""
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("libx264", rate=8)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sounds = []
        for _, default in tracks:
            sound = container.add_stream("aac", rate=48000, layout="stereo")
            sound.disposition = av.stream.Disposition.default if default else 0
            sounds.append(sound)
        for i in range(video_frames):
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), "rgb24")))
        container.mux(video.encode(None))
        for sound, (amplitude, _) in zip(sounds, tracks):
            tone = (amplitude * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)).astype(np.float32)
            for start in range(0, tone.size, 1024):
                frame = av.AudioFrame.from_ndarray(np.stack([tone[start:start + 1024]] * 2), format="fltp",
                                                   layout="stereo")
                frame.sample_rate, frame.pts = 48000, start
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))


@pytest.mark.parametrize("silent_first", [True, False])
def test_of_two_audio_tracks_the_default_one_is_read(tmp_path, silent_first):
    """A silent, non-default first track was read and the utterance stored as silence."""
    path = tmp_path / "two_tracks.mkv"
    tracks = [(0.0, False), (0.3, True)] if silent_first else [(0.3, True), (0.0, False)]
    _write_tracks(path, 8, tracks)
    assert media.probe(path).decodable
    signal = media.load_audio(path)
    assert not media.is_silent(signal) and np.sqrt(np.mean(signal ** 2)) > 0.1


def test_an_empty_video_track_is_no_video_and_the_sound_is_kept(tmp_path):
    """Matroska keeps a video track without frames: the probe said 'StopIteration: ' and the good sound was lost."""
    path = tmp_path / "empty_video.mkv"
    _write_tracks(path, 0, [(0.3, True)])
    info = media.probe(path)
    assert info.decodable and info.has_audio and not info.has_video, info
    assert np.sqrt(np.mean(media.load_audio(path) ** 2)) > 0.1


def test_a_wav_write_that_runs_out_of_room_names_the_file(tmp_path):
    """libsndfile says only "System error." when the disk is full (or a file size limit is reached)."""
    out = tmp_path / "audio" / "u1.wav"
    code = ("import resource, signal\n"
            "import numpy as np\n"
            "from ercpipe.io.media import write_wav\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
            f"write_wav({str(out)!r}, np.zeros(16000, np.float32))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ercpipe.io.atomic.WriteFailedError: could not write {out}: the write stopped after 4 KiB"
                           " with "), last
    assert "LibsndfileError: System error." in last and list(out.parent.iterdir()) == []
    # Another libsndfile error is not called a full disk.
    with pytest.raises(sf.LibsndfileError, match="SF_INFO"):
        write_wav(tmp_path / "bad_rate.wav", np.zeros(100, np.float32), sample_rate=0)


def test_a_full_disk_while_cutting_utterance_audio_stops_the_job_naming_the_file(tmp_path):
    """The pipeline's WAV cutting (rule utterance_audio) wrote through libsndfile unwrapped: a full disk gave
    "System error." alone, and an ENOSPC there would have been recorded as the recording's corrupt_audio."""
    source = tmp_path / "talk.wav"
    sf.write(str(source), np.random.default_rng(0).uniform(-0.5, 0.5, 48000).astype(np.float32), 16000)
    out = tmp_path / "wavs"
    out.mkdir()
    code = ("import math, resource, signal\n"
            "from types import SimpleNamespace\n"
            "from ercpipe.datasets.media_prep import utterance_audio\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))\n"
            f"row = SimpleNamespace(utterance_id='d0_u0', flags='', audio_path={str(source)!r}, audio_start=0.5, "
            "audio_end=2.5)\n"
            f"print(utterance_audio(row, __import__('pathlib').Path({str(out)!r})))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "corrupt_audio" not in result.stdout, (result.stdout, result.stderr[-1500:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ercpipe.io.atomic.WriteFailedError: could not write {out / 'd0_u0.wav'}: the write "
                           "stopped after"), last
    assert list(out.iterdir()) == []
