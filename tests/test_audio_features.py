"""openSMILE audio features on real speech (espeak-ng), silence, missing and too-short audio."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from ercpipe.features import audio
from ercpipe.features.interface import ExtractionContext
from ercpipe.io import features as feature_io
from ercpipe.io import manifest as manifest_io
from ercpipe.io.media import SAMPLE_RATE, read_wav, write_wav

ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")


def speak(text: str, pitch: int, out: Path) -> np.ndarray:
    """espeak-ng speech resampled from 22.05 kHz to a 16 kHz mono WAV; returns the signal."""
    raw = out.with_suffix(".22k.wav")
    subprocess.run([ESPEAK, "-v", "en-us", "-p", str(pitch), "-s", "190", "-w", str(raw), text], check=True)
    signal, rate = sf.read(str(raw), dtype="float32")
    assert rate == 22050
    signal = resample_poly(signal, 320, 441).astype(np.float32)  # 22050 * 320 / 441 = 16000
    write_wav(out, signal)
    raw.unlink()
    return signal


def manifest_rows(ids_by_dialogue: dict[str, list[str]], flags: dict[str, str] | None = None) -> pd.DataFrame:
    rows = []
    for dialogue, ids in ids_by_dialogue.items():
        for index, uid in enumerate(ids):
            rows.append({"dataset": "t", "split": "train", "dialogue_id": dialogue, "utterance_index": index,
                         "utterance_id": uid, "speaker": "Ses01_F", "speaker_slot": 0, "label": "neu",
                         "text": "x", "audio_path": f"/nowhere/{uid}.wav", "audio_start": 0.0, "audio_end": 1.0,
                         "video_path": "", "video_start": float("nan"), "video_end": float("nan"),
                         "flags": (flags or {}).get(uid, "")})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> dict[str, np.ndarray]:
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    root = tmp_path_factory.mktemp("speech")
    return {"high": speak("I cannot believe you did that to me again", 80, root / "high.wav"),
            "low": speak("Well, that is fine, we can talk about it later", 15, root / "low.wav")}


@pytest.fixture(scope="session")
def audio_shard(tmp_path_factory, speech) -> tuple[Path, Path]:
    """A manifest of two dialogues and an utterance-audio directory with every kind of row."""
    root = tmp_path_factory.mktemp("audio_shard")
    audio_dir = root / "audio"
    write_wav(audio_dir / "d0_u0.wav", speech["high"])
    write_wav(audio_dir / "d0_u1.wav", speech["low"])
    write_wav(audio_dir / "d0_u2.wav", np.zeros(SAMPLE_RATE, dtype=np.float32))  # digital silence
    write_wav(audio_dir / "d1_u2.wav", speech["low"][:100])  # 6 ms: shorter than openSMILE's windows
    write_wav(audio_dir / "d1_u3.wav", speech["high"])
    (audio_dir / "d1_u1.wav").write_bytes(b"RIFF\x00\x00")  # stray file: the report's status wins
    report = pd.DataFrame({
        "utterance_id": ["d0_u0", "d0_u1", "d0_u2", "d1_u0", "d1_u1", "d1_u2", "d1_u3"],
        "status": ["ok", "ok", "ok", "missing_audio", "no_audio_stream", "ok", "ok"],
        "detail": ["", "", "", "/raw/x.wav does not exist", "", "", ""]})
    report.to_csv(audio_dir / "_report.tsv", sep="\t", index=False)
    manifest = root / "manifest.tsv"
    manifest_io.write(manifest_rows({"d0": ["d0_u0", "d0_u1", "d0_u2"],
                                     "d1": ["d1_u0", "d1_u1", "d1_u2", "d1_u3"]}), manifest)
    return manifest, audio_dir


@needs_espeak
def test_is10_functionals_are_1582_finite_and_follow_the_signal(speech):
    smile = audio.make_smile({"feature_set": "IS10"})
    high = audio.functionals(smile, speech["high"], SAMPLE_RATE)
    low = audio.functionals(smile, speech["low"], SAMPLE_RATE)
    assert high.shape == low.shape == (1582,)
    assert high.dtype == np.float32 and np.isfinite(high).all() and np.isfinite(low).all()
    assert not np.allclose(high, low)
    # The same signal gives the same vector: the features are a function of the audio.
    np.testing.assert_array_equal(high, audio.functionals(smile, speech["high"], SAMPLE_RATE))


@needs_espeak
@pytest.mark.parametrize("feature_set, dim", [("eGeMAPSv02", 88), ("ComParE_2016", 6373)])
def test_other_feature_sets_have_their_documented_width(speech, feature_set, dim):
    vector = audio.functionals(audio.make_smile({"feature_set": feature_set}), speech["low"], SAMPLE_RATE)
    assert vector.shape == (dim,) == (audio.feature_dim({"feature_set": feature_set}),)
    assert np.isfinite(vector).all()


@needs_espeak
@pytest.mark.filterwarnings("ignore:Segment too short")  # the 6 ms row, on purpose
def test_extract_shard_writes_features_and_records_absent_rows(audio_shard, speech, tmp_path, caplog):
    manifest, audio_dir = audio_shard
    out = tmp_path / "shard0.h5"
    with caplog.at_level("WARNING", logger="ercpipe.features.audio"):
        audio.extract_shard(manifest, {}, out, threads=2, context=ExtractionContext(audio_dir=audio_dir))
    assert "audio: 4 of 7 utterances have no features" in caplog.text

    fs = feature_io.read(out, expected_dim=1582,
                         expected_hash=feature_io.settings_hash(audio.audio_settings({})))
    assert fs.utterance_ids == ["d0_u0", "d0_u1", "d0_u2", "d1_u0", "d1_u1", "d1_u2", "d1_u3"]
    assert fs.present.tolist() == [True, True, False, False, False, False, True]
    assert np.all(fs.features[~fs.present] == 0)
    assert np.abs(fs.features[fs.present]).sum(axis=1).min() > 0
    smile = audio.make_smile({})
    stored, rate = read_wav(audio_dir / "d0_u0.wav")  # 16-bit on disk, so compare with what was stored
    np.testing.assert_allclose(fs.features[0], audio.functionals(smile, stored, rate), rtol=1e-5)
    np.testing.assert_allclose(fs.features[0], fs.features[6], rtol=1e-5)  # same speech, same vector

    absent = json.loads(fs.attrs["absent"])
    assert absent["d0_u2"] == "silent_audio"
    assert absent["d1_u0"] == "missing_audio: /raw/x.wav does not exist"
    assert absent["d1_u1"] == "no_audio_stream"
    assert absent["d1_u2"].startswith("non_finite_features")
    assert set(absent) == {"d0_u2", "d1_u0", "d1_u1", "d1_u2"}
    assert fs.attrs["modality"] == "audio" and fs.attrs["extractor"] == "opensmile" and fs.attrs["model"] == "IS10"
    assert fs.attrs["versions"]["opensmile"] == "2.6.0"
    assert fs.attrs["versions"]["av"] == __import__("av").__version__  # FFmpeg decoded and resampled the WAVs


@needs_espeak
@pytest.mark.filterwarnings("ignore:Segment too short")  # the 6 ms row, on purpose
def test_shards_hold_only_their_dialogues(audio_shard, tmp_path):
    manifest, audio_dir = audio_shard
    # Three shards of two dialogues (3 + 4 utterances): d0, d1 and an empty shard. Each job reads its own
    # shard's manifest (rule build_manifest_shard writes it with shard_rows) and extracts all of it.
    frame = manifest_io.read(manifest)
    context = ExtractionContext(audio_dir=audio_dir)
    for shard in (1, 2):
        manifest_io.write(manifest_io.shard_rows(frame, shard, 3), tmp_path / f"shard{shard}.tsv")
    audio.extract_shard(tmp_path / "shard1.tsv", {"feature_set": "eGeMAPSv02"}, tmp_path / "s1.h5", context=context)
    fs = feature_io.read(tmp_path / "s1.h5", expected_dim=88)
    assert fs.utterance_ids == ["d1_u0", "d1_u1", "d1_u2", "d1_u3"]
    assert fs.present.tolist() == [False, False, False, True]
    audio.extract_shard(tmp_path / "shard2.tsv", {"feature_set": "eGeMAPSv02"}, tmp_path / "s2.h5", context=context)
    empty = feature_io.read(tmp_path / "s2.h5", expected_dim=88)
    assert empty.utterance_ids == [] and empty.features.shape == (0, 88)


@needs_espeak
def test_directory_without_report_uses_manifest_flags(speech, tmp_path):
    audio_dir = tmp_path / "wavs"
    write_wav(audio_dir / "a.wav", speech["low"])
    manifest = tmp_path / "m.tsv"
    manifest_io.write(manifest_rows({"d": ["a", "b", "c"]}, flags={"c": "corrupt_audio"}), manifest)
    audio.extract_shard(manifest, {"feature_set": "eGeMAPSv02"}, tmp_path / "o.h5",
                        context=ExtractionContext(audio_dir=audio_dir))
    fs = feature_io.read(tmp_path / "o.h5")
    assert fs.present.tolist() == [True, False, False]
    assert json.loads(fs.attrs["absent"]) == {"b": "missing_wav", "c": "corrupt_audio"}


def test_report_saying_ok_without_the_wav_is_an_error(tmp_path):
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    pd.DataFrame({"utterance_id": ["a"], "status": ["ok"], "detail": [""]}).to_csv(
        audio_dir / "_report.tsv", sep="\t", index=False)
    manifest = tmp_path / "m.tsv"
    manifest_io.write(manifest_rows({"d": ["a"]}), manifest)
    with pytest.raises(FileNotFoundError, match=r"utterance a is ok but .*a\.wav does not exist"):
        audio.extract_shard(manifest, {}, tmp_path / "o.h5", context=ExtractionContext(audio_dir=audio_dir))
    assert not (tmp_path / "o.h5").exists()


def test_settings_are_validated():
    assert audio.audio_settings(None) == {"feature_set": "IS10", "level": "functionals"}
    with pytest.raises(ValueError, match="unknown audio feature setting.*'window'"):
        audio.audio_settings({"window": 1})
    with pytest.raises(ValueError, match="feature_set 'IS99'"):
        audio.audio_settings({"feature_set": "IS99"})
    with pytest.raises(ValueError, match="level 'lld'"):
        audio.audio_settings({"level": "lld"})


@needs_espeak
def test_features_from_the_utterance_audio_step(speech, tmp_path):
    """The real utterance-audio step (ercpipe.datasets.media_prep) feeds extract_shard end to end."""
    from ercpipe.datasets import media_prep

    session = tmp_path / "session.wav"
    write_wav(session, np.concatenate([speech["high"], np.zeros(SAMPLE_RATE, np.float32), speech["low"]]))
    second = 1.0 + len(speech["high"]) / SAMPLE_RATE
    rows = manifest_rows({"d": ["a", "b", "c", "gap"]})
    rows["audio_path"] = [str(session), str(session), str(tmp_path / "absent.wav"), str(session)]
    rows["audio_start"] = [0.0, second, 0.0, second - 0.9]
    rows["audio_end"] = [second - 1.0, float("nan"), 1.0, second - 0.1]
    manifest = tmp_path / "m.tsv"
    manifest_io.write(rows, manifest)
    audio_dir = tmp_path / "audio"
    media_prep.write_utterance_audio(manifest, 0, 1, audio_dir)
    audio.extract_shard(manifest, {"feature_set": "eGeMAPSv02"}, tmp_path / "o.h5",
                        context=ExtractionContext(audio_dir=audio_dir))
    fs = feature_io.read(tmp_path / "o.h5", expected_ids=["a", "b", "c", "gap"], expected_dim=88)
    assert fs.present.tolist() == [True, True, False, False]
    absent = json.loads(fs.attrs["absent"])
    assert absent["c"].startswith("missing_audio") and absent["gap"].startswith("silent_audio")
    smile = audio.make_smile({"feature_set": "eGeMAPSv02"})
    np.testing.assert_allclose(fs.features[1], audio.functionals(smile, *read_wav(audio_dir / "b.wav")), rtol=1e-5)
    assert not np.allclose(fs.features[0], fs.features[1])


def test_undecodable_wav_is_recorded_as_corrupt(tmp_path):
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    (audio_dir / "a.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")
    manifest = tmp_path / "m.tsv"
    manifest_io.write(manifest_rows({"d": ["a"]}), manifest)
    audio.extract_shard(manifest, {"feature_set": "eGeMAPSv02"}, tmp_path / "o.h5",
                        context=ExtractionContext(audio_dir=audio_dir))
    fs = feature_io.read(tmp_path / "o.h5")
    assert fs.present.tolist() == [False]
    assert json.loads(fs.attrs["absent"])["a"].startswith("corrupt_audio: ")


# ------------------------------------------------------------------------------ memory that follows the data

def _tone_and_speech(speech: dict[str, np.ndarray], seconds: float) -> np.ndarray:
    """`seconds` of the two espeak-ng sentences and pauses, repeated."""
    base = np.concatenate([speech["high"], np.zeros(SAMPLE_RATE // 4, np.float32), speech["low"],
                           np.zeros(SAMPLE_RATE // 2, np.float32)])
    return np.resize(base, int(seconds * SAMPLE_RATE)).astype(np.float32)


@needs_espeak
@pytest.mark.parametrize("feature_set", ["IS10", "eGeMAPSv02", "ComParE_2016"])
def test_streamed_functionals_are_bit_identical_to_process_signal(speech, tmp_path, feature_set):
    """The block-wise path (bounded memory) gives exactly openSMILE's whole-signal vector."""
    smile = audio.make_smile({"feature_set": feature_set})
    path = tmp_path / "u.wav"
    write_wav(path, _tone_and_speech(speech, 23.3))  # not a whole number of blocks
    signal, rate = read_wav(path)
    direct = smile.process_signal(signal, rate).to_numpy(dtype=np.float32).reshape(-1)
    np.testing.assert_array_equal(audio.wav_functionals(smile, path), direct)
    np.testing.assert_array_equal(audio.functionals(smile, signal, rate), direct)
    # A WAV that is not 16 kHz mono 16-bit (a plain directory of WAVs): the same conversion as before.
    stereo = np.stack([signal[:5 * rate], 0.5 * signal[:5 * rate]], axis=1)
    sf.write(str(tmp_path / "s.wav"), stereo, rate, subtype="FLOAT")
    mixed, _ = read_wav(tmp_path / "s.wav")
    np.testing.assert_array_equal(audio.wav_functionals(smile, tmp_path / "s.wav"),
                                  smile.process_signal(mixed, rate).to_numpy(dtype=np.float32).reshape(-1))


def test_too_short_signal_gives_nan_like_process_signal():
    smile = audio.make_smile({"feature_set": "eGeMAPSv02"})
    vector = audio.functionals(smile, np.full(50, 0.1, np.float32), SAMPLE_RATE)
    assert vector.shape == (88,) and np.isnan(vector).all()


@needs_espeak
@pytest.mark.parametrize("window", [(float("nan"), float("nan")), (0.37, 2.91), (1.0, float("nan")), (0.0, 0.005),
                                    (30.0, 31.0)])
def test_utterance_audio_streams_exactly_the_samples_of_load_audio(speech, tmp_path, window):
    """media_prep writes each window block by block; the WAV equals load_audio's samples, byte for byte."""
    import av

    from ercpipe.datasets.media_prep import stream_utterance_wav
    from ercpipe.io.media import load_audio

    signal = _tone_and_speech(speech, 4.0)
    sources = {"wav": tmp_path / "src.wav", "mp4": tmp_path / "src.mp4"}
    sf.write(str(sources["wav"]), np.stack([signal, signal * 0.5], axis=1), SAMPLE_RATE)
    with av.open(str(sources["mp4"]), "w") as container:  # AAC 48 kHz, as MELD's clips
        stream = container.add_stream("aac", rate=48000, layout="mono")
        up = resample_poly(signal, 3, 1).astype(np.float32)
        for start in range(0, up.size, 1024):
            frame = av.AudioFrame.from_ndarray(up[None, start:start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = 48000, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    for kind, source in sources.items():
        out = tmp_path / f"{kind}.wav"
        samples, peak, mean = stream_utterance_wav(source, *window, out)
        expected = load_audio(source, *window)
        assert samples == expected.size, kind
        if samples == 0:
            assert not out.exists()
            continue
        write_wav(tmp_path / "ref.wav", expected)
        assert out.read_bytes() == (tmp_path / "ref.wav").read_bytes(), kind
        assert peak == pytest.approx(float(np.max(np.abs(expected))))
        assert mean == pytest.approx(float(np.mean(expected, dtype=np.float64)), abs=1e-7)


_PEAK_RSS = """
import json, sys
from pathlib import Path
{body}
with open("/proc/self/status") as fh:
    peak = [int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:")][0]
print(json.dumps({{"peak_rss_mb": peak}}))
"""


def _peak_rss_mb(body: str) -> float:
    """Run `body` in a fresh interpreter; its peak resident memory (VmHWM), MB."""
    import os
    import sys

    done = subprocess.run([sys.executable, "-c", _PEAK_RSS.format(body=body)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]


@needs_espeak
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
def test_ten_minute_utterance_fits_its_reservation_and_is_not_cut(speech, tmp_path):
    """A 10-minute clip through the utterance-audio step and the IS10 extractor, each in its own process:
    neither exceeds the mem_mb its job reserves, and the stored vector is openSMILE's result on the
    whole file (openSMILE reading the file itself), so nothing was cut."""
    from ercpipe import resources

    raw = tmp_path / "raw.wav"
    write_wav(raw, _tone_and_speech(speech, 600.0))
    rows = manifest_rows({"d0": ["long"], "d1": ["short"]})
    rows["audio_path"] = [str(raw), str(raw)]
    rows["audio_start"] = [float("nan"), 10.0]
    rows["audio_end"] = [float("nan"), 13.0]
    manifest = tmp_path / "manifest.tsv"
    manifest_io.write(rows, manifest)
    wavs, out = tmp_path / "audio", tmp_path / "is10.h5"

    prep_peak = _peak_rss_mb(f"from ercpipe.datasets.media_prep import write_utterance_audio\n"
                             f"write_utterance_audio({str(manifest)!r}, 0, 1, Path({str(wavs)!r}), threads=2)")
    assert sf.info(str(wavs / "long.wav")).frames == 600 * SAMPLE_RATE  # the whole clip, not cut
    reserved = resources.extraction_resources(manifest, 0, 1, "utterance_audio", 2)
    assert prep_peak <= reserved["mem_mb"]

    extract_peak = _peak_rss_mb(f"from ercpipe.features import audio\n"
                                f"from ercpipe.features.interface import ExtractionContext\n"
                                f"audio.extract_shard({str(manifest)!r}, {{'feature_set': 'IS10'}}, {str(out)!r}, "
                                f"threads=2, context=ExtractionContext(audio_dir=Path({str(wavs)!r})))")
    reserved = resources.extraction_resources(manifest, 0, 1, "audio", 2, audio_dir=wavs,
                                              settings={"feature_set": "IS10"})
    assert extract_peak <= reserved["mem_mb"], (extract_peak, reserved)
    assert isinstance(reserved["mem_mb"], int) and isinstance(reserved["runtime"], int)

    fs = feature_io.read(out, expected_ids=["long", "short"], expected_dim=1582)
    assert fs.present.tolist() == [True, True] and json.loads(fs.attrs["absent"]) == {}
    np.testing.assert_array_equal(fs.features[0], _opensmile_on_file(wavs / "long.wav", "IS10"))


def _opensmile_on_file(path: Path, feature_set: str) -> np.ndarray:
    """openSMILE's functionals with its own file reader (cWaveSource) on the whole file: no ercpipe code."""
    import os

    from opensmile.core.config import config as smile_config
    from opensmile.core.lib import OpenSMILE

    smile = audio.make_smile({"feature_set": feature_set})
    options = smile._options()
    options["source"] = os.path.join(smile.default_config_root, smile_config.FILE_INPUT_CONFIG)
    options["filename"] = str(path)
    native = OpenSMILE()
    native.initialize(smile.config_path, options)
    rows = []
    native.external_sink_set_callback_ex(smile_config.EXTERNAL_OUTPUT_COMPONENT,
                                         lambda data, meta: rows.append(np.array(data, dtype=np.float32)))
    native.run()
    native.free()
    assert len(rows) == 1
    return rows[0].reshape(-1)


def test_the_opensmile_stream_config_is_one_file_per_user_that_no_killed_job_leaves_behind(tmp_path):
    """A folder of its own per process, removed at exit, stayed behind every killed audio job (SIGKILL, or
    SIGTERM's default action, runs no atexit)."""
    code = "from ercpipe.features import audio; print(audio._stream_source_conf())"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    paths = {subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            check=True).stdout.strip() for _ in range(2)}
    assert paths == {str(tmp_path / f"ercpipe-opensmile-{os.getuid()}" / "stream_source.conf.inc")}
    assert [p.name for p in tmp_path.iterdir()] == [f"ercpipe-opensmile-{os.getuid()}"]
    assert (tmp_path / f"ercpipe-opensmile-{os.getuid()}").stat().st_mode & 0o777 == 0o700
    # Killed while it holds the config: nothing of its own is left (the shared file stays, whole).
    process = subprocess.Popen([sys.executable, "-c", code + "; import time; time.sleep(60)"], env=env,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() in paths
    process.kill()
    process.wait()
    assert [p.name for p in tmp_path.iterdir()] == [f"ercpipe-opensmile-{os.getuid()}"]
    assert (tmp_path / f"ercpipe-opensmile-{os.getuid()}" / "stream_source.conf.inc").read_text() == \
        audio._STREAM_SOURCE_CONF


# openSMILE in a process of its own with a stop (SystemExit, as the CLI's SIGTERM handler raises) made to come at
# a chosen point of _stream_functionals; it prints how many runs began and returned before the stop went on.
_STOPPED_OPENSMILE = """
import sys, threading, numpy as np, opensmile
from opensmile.core.lib import OpenSMILE
from ercpipe.features import audio
when = sys.argv[1]
runs = {"began": 0, "returned": 0}
run, start, wait = OpenSMILE.run, threading.Thread.start, threading.Event.wait
eoi = OpenSMILE.external_audio_source_set_eoi
before_run = threading.Event()
def counted_run(native):
    if when == "before_run":  # the thread waits until the stop came
        wait(before_run)
    runs["began"] += 1
    run(native)
    runs["returned"] += 1
OpenSMILE.run = counted_run
def interrupted_start(thread):
    if when == "before_start":
        raise SystemExit(143)
    start(thread)
    before_run.set()
    if when in ("after_start", "before_run"):
        raise SystemExit(143)
threading.Thread.start = interrupted_start
def interrupted_eoi(native, source):  # the stop comes in the wait for the end of the buffered audio
    eoi(native, source)
    if when == "while_finishing":
        threading.Event.wait = lambda event, timeout=None: (setattr(threading.Event, "wait", wait),
                                                             (_ for _ in ()).throw(SystemExit(143)))
OpenSMILE.external_audio_source_set_eoi = interrupted_eoi
smile = opensmile.Smile(feature_set=opensmile.FeatureSet.IS10, feature_level=opensmile.FeatureLevel.Functionals)
signal = np.random.default_rng(0).normal(0, 0.1, 16000 * 20).astype(np.float32)
try:
    audio.functionals(smile, signal, 16000)
    print("not stopped")
finally:
    print("runs", runs["began"], runs["returned"])
"""


@pytest.mark.parametrize("when", ["before_start", "after_start", "before_run", "while_finishing"])
def test_a_stop_inside_opensmile_ends_its_run_before_it_goes_on(when):
    """The CLI's SIGTERM or Ctrl-C raises wherever the main thread is. openSMILE's run was left going in its
    daemon thread, and the process crashed at exit (status -11 or -6, "FATAL: exception not rethrown", predict's
    working folder left behind), when the stop came while the thread was being started (long on a loaded
    machine), before its run began (openSMILE refuses to abort a run not begun), or in the wait for the end of the
    buffered audio (Python 3.11's Thread.join, interrupted, marks a running thread stopped)."""
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", _STOPPED_OPENSMILE, when], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 143, done.stderr[-2000:]
        (line,) = done.stdout.splitlines()  # "not stopped" is not printed
        _, began, returned = line.split()
        assert began == returned, done.stderr[-2000:]
        if when != "after_start":  # there, whether the run began depends on which thread comes first
            assert began == ("0" if when == "before_start" else "1"), line
        assert "Traceback" not in done.stderr, done.stderr[-2000:]


def test_a_temporary_folder_named_in_other_letters_gives_the_same_features(tmp_path):
    """openSMILE reads its options as ASCII, and its streaming config lives in the temporary folder: TMPDIR=/tmp/é
    stopped every audio job with a UnicodeEncodeError from inside opensmile. An ASCII system folder is used then."""
    code = """
import numpy as np
from ercpipe.features import audio
signal = np.random.default_rng(0).normal(0, 0.1, 16000 * 2).astype(np.float32)
values = audio.functionals(audio.make_smile({}), signal, 16000)
print(audio._stream_source_conf()); np.save(__import__("sys").argv[1], values)
"""
    results = {}
    for name in ("plain", "tmp é"):
        (tmp_path / name).mkdir()
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{name}.npy")], capture_output=True,
                              text=True, env={**os.environ, "TMPDIR": str(tmp_path / name)}, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        results[name] = done.stdout.strip(), np.load(tmp_path / f"{name}.npy")
    assert results["plain"][0].startswith(str(tmp_path / "plain"))
    assert results["tmp é"][0].isascii() and results["tmp é"][0].endswith(f"ercpipe-opensmile-{os.getuid()}/"
                                                                          "stream_source.conf.inc")
    np.testing.assert_array_equal(results["plain"][1], results["tmp é"][1])


def test_opensmile_installed_under_other_letters_is_named_as_the_cause(tmp_path):
    """The same limit for openSMILE's own config files: an environment at /home/x/Émotions/.venv failed with
    "'ascii' codec can't encode character" alone. The message names the folder and how to install elsewhere."""
    package = tmp_path / "envé" / "opensmile"
    shutil.copytree(Path(audio.opensmile.__file__).parent, package)
    code = "from ercpipe.features import audio; audio.make_smile({})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert f"OpenSmilePathError: openSMILE reads only paths of ASCII characters, and its config files are under " \
           f"{package}; install the environment at such a path" in done.stderr
