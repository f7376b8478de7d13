"""Extraction on real-format media: utterances/s and peak RSS per extractor, a whole-dataset extrapolation,
and openSMILE's scaling with threads.

    .venv/bin/python bench/bench_real_format.py                     # everything, 4-6 minutes on 2 cores
    .venv/bin/python bench/bench_real_format.py --only scaling       # openSMILE threads vs processes only
    .venv/bin/python bench/bench_real_format.py --json out.json
    .venv/bin/python bench/bench_real_format.py --only visual-ab --baseline /tmp/visual_before.py --repeats 2

The media come from bench/real_format_media.py: MELD-like 1280x720 H.264 + AAC 48 kHz stereo clips with
two or three photographed faces (one clip per utterance; the utterance-audio step decodes the AAC), and
an IEMOCAP-like 720x480 MPEG-4 Part 2 ("DivX") .avi of several minutes with both actors side by side,
whose utterances are time windows spread over the whole file (their audio: 16 kHz mono WAVs).

Before anything is timed the benchmark checks what the speed relies on, and stops if it does not hold:
MTCNN on the bounded copy (the default detect_max_side, 720) finds the face of a real photograph placed in a 720p
frame within 6 px of where it was placed; the frames of the deepest IEMOCAP window read by seeking equal
those decoded from the start of the file (times and pixels). After each run every row must have
features (present/utterances), or the speed means nothing.

Each extractor runs as one `extract_shard` call (one thread) in a fresh process: seconds are the call's
wall time (model loading included, imports excluded), peak RSS is that process's VmHWM.

--only visual-ab compares the visual extractor of another visual.py (--baseline, e.g. the previous commit's)
with the working tree's: densenet121 (random weights), one thread, alternated --repeats times in fresh
processes, on MELD-like 3-s clips and IEMOCAP-like 4.5-s and 1-s windows; CPU seconds, the largest feature
difference between the two.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_format_media as rfm  # noqa: E402  (same folder)
from process_stats import cpu_seconds, markdown_row, markdown_table, peak_rss_mb  # noqa: E402  (same folder)
from ercpipe.io import manifest as manifest_io  # noqa: E402

# Whole datasets (utterances in the manifest, every row extracted) and the mean utterance length assumed.
DATASETS = {"IEMOCAP": {"utterances": 10039, "corpus": "iemocap"},
            "MELD": {"utterances": 13708, "corpus": "meld"}}
MELD_SECONDS = 3.0  # MELD's clips average about 3.2 s
IEMOCAP_UTTERANCE_SECONDS = 4.5  # IEMOCAP's utterances average about 4.5 s
VISUAL = {"backbone": "densenet121", "weights": "random"}


# ------------------------------------------------------------------------------------------ checks

def check_bounded_detection() -> str:
    import torch

    from ercpipe.features import visual

    torch.set_num_threads(1)
    detector = visual.build_detector({}, "cpu")
    native = visual.detect_faces(detector, [rfm.photo("astronaut")])[0]
    scale, x0, y0 = 1.25, 533, 71
    frame = rfm.photo_in_frame("astronaut", scale, x0, y0)
    faces = visual.detect_faces(detector, [frame], max_side=visual.DEFAULT_SETTINGS["detect_max_side"])[0]
    expected = native[0].box * scale + np.array([x0, y0, x0, y0], dtype=np.float32)
    if len(faces) != 1:
        raise SystemExit(f"check failed: {len(faces)} faces found on the bounded copy, expected 1")
    error = float(np.abs(faces[0].box - expected).max())
    if error >= 6:
        raise SystemExit(f"check failed: the mapped-back box is {error:.1f} px from where the face was placed")
    return f"bounded detection: the astronaut's box maps back within {error:.1f} px"


def check_seeking(manifest: Path) -> tuple[str, dict]:
    """Seeking equals decoding from the start on the deepest window; times both over every window."""
    from ercpipe.io import media

    rows = manifest_io.read(manifest)
    deepest = rows.loc[rows["video_start"].idxmax()]
    path, lo, hi = Path(deepest.video_path), float(deepest.video_start), float(deepest.video_end)
    sought = list(media.iter_frames(path, lo, hi, fps=2.0))
    reference = rfm.decode_from_start(path, lo, hi, 2.0)
    if [t for t, _ in sought] != [t for t, _ in reference] or not all(
            np.array_equal(a, b) for (_, a), (_, b) in zip(sought, reference)):
        raise SystemExit(f"check failed: seeking {path} to {lo} s does not give the frames decoded from the start")
    timing = {}
    for name, read in (("seek (iter_frames)", lambda p, a, b: list(media.iter_frames(p, a, b, fps=2.0))),
                       ("decode from the start", lambda p, a, b: rfm.decode_from_start(p, a, b, 2.0))):
        start = time.perf_counter()
        for row in rows.itertuples(index=False):
            read(Path(row.video_path), float(row.video_start), float(row.video_end))
        timing[name] = (time.perf_counter() - start) / len(rows)
    return (f"seeking: {len(sought)} frames at {lo:.1f}-{hi:.1f} s equal the frames decoded from the start; "
            f"per utterance {timing['seek (iter_frames)']:.3f} s seeking, "
            f"{timing['decode from the start']:.3f} s decoding from the start"), timing


# ------------------------------------------------------------------------------------------ runs

def _cpu_with_children() -> float:
    """CPU seconds of this process and of its finished children (audio's worker processes)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return cpu_seconds() + usage.ru_utime + usage.ru_stime


def _timed(kind: str, manifest: str, settings: dict, out: str, threads: int, audio_dir: str | None,
           face_selection: dict | None, wav_dir: str | None, device: str = "cpu") -> dict:
    """In a fresh process: one extract_shard call (or the utterance-audio step) on `device`; seconds, CPU,
    peak RSS. (bench/bench_gpu.py calls it with device="cuda".)"""
    if kind in ("visual", "text"):  # torch only where it is used: it would add ~450 MB to the other rows' RSS
        import torch

        torch.set_num_threads(threads)
    if kind == "utterance_audio":
        from ercpipe.datasets import media_prep

        start, cpu_start = time.perf_counter(), _cpu_with_children()
        media_prep.write_utterance_audio(manifest, 0, 1, Path(wav_dir), threads=threads)
        seconds = time.perf_counter() - start
        report = pd.read_csv(Path(wav_dir) / media_prep.REPORT_NAME, sep="\t")
        present = int((report["status"] == "ok").sum())
    else:
        from ercpipe.features import ExtractionContext, extract_shard, extractor
        from ercpipe.io.features import read

        extractor(kind)  # imported before the clock starts
        context = ExtractionContext(audio_dir=Path(audio_dir) if audio_dir else None, face_selection=face_selection)
        start, cpu_start = time.perf_counter(), _cpu_with_children()
        extract_shard(kind, manifest, settings, out, threads=threads, device=device, context=context)
        seconds = time.perf_counter() - start
        present = int(read(out).present.sum())
    return {"seconds": seconds, "cpu_seconds": _cpu_with_children() - cpu_start, "peak_rss_mb": peak_rss_mb(),
            "present": present}


def measure(corpus: str, name: str, kind: str, manifest: Path, settings: dict, out_dir: Path, *,
            threads: int = 1, audio_dir: Path | None = None, face_selection: dict | None = None,
            wav_dir: Path | None = None) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        result = pool.submit(_timed, kind, str(manifest), settings, str(out_dir / f"{corpus}_{name}.h5".replace(" ", "_")),
                             threads, str(audio_dir) if audio_dir else None, face_selection,
                             str(wav_dir) if wav_dir else None).result()
    n = len(manifest_io.read(manifest))
    if result["present"] != n:
        raise SystemExit(f"check failed: {name} on {corpus} gave features for {result['present']} of {n} rows")
    row = {"corpus": corpus, "extractor": name, "utterances": n, "threads": threads, **result,
           "utt_per_s": n / result["seconds"]}
    print(_format_row(row), file=sys.stderr)
    return row


def _text_row(corpus: str, manifest: Path) -> dict:
    from bench_text import bench_text

    row = bench_text(manifest, threads=1, extractors=["minilm"])[0]
    return {"corpus": corpus, **row}  # row["present"]: checked by bench_text against the transcripts


def run_extractors(tmp: Path, n_meld: int, iemocap_seconds: float, n_iemocap: int) -> tuple[list[dict], list[str]]:
    notes = [check_bounded_detection()]
    print(notes[-1], file=sys.stderr)
    start = time.perf_counter()
    meld = rfm.make_meld_corpus(tmp / "meld", n_dialogues=max(1, n_meld // 4), per_dialogue=min(4, n_meld),
                                seconds=MELD_SECONDS)
    iemocap, iemocap_audio = rfm.make_iemocap_corpus(tmp / "iemocap", 1, iemocap_seconds, n_iemocap,
                                                     IEMOCAP_UTTERANCE_SECONDS)
    notes.append(f"media generated in {time.perf_counter() - start:.0f} s")
    seek_note, _ = check_seeking(iemocap)
    notes.append(seek_note)
    print(seek_note, file=sys.stderr)
    rows = []
    meld_wavs = tmp / "meld_wavs"
    rows.append(measure("meld", "utterance audio (AAC 48k stereo -> 16k WAV)", "utterance_audio", meld, {}, tmp,
                        wav_dir=meld_wavs))
    largest = {"mode": "largest_central"}
    for corpus, manifest, audio_dir, faces in (("meld", meld, meld_wavs, largest),
                                               ("iemocap", iemocap, iemocap_audio, rfm.SIDE)):
        rows.append(measure(corpus, "opensmile IS10", "audio", manifest, {"feature_set": "IS10"}, tmp,
                            audio_dir=audio_dir))
        rows.append(measure(corpus, "mtcnn+densenet121", "visual", manifest, VISUAL, tmp, face_selection=faces))
        rows.append(measure(corpus, "mtcnn+densenet121, detect_max_side 640", "visual", manifest,
                            {**VISUAL, "detect_max_side": 640}, tmp, face_selection=faces))
        rows.append(measure(corpus, "mtcnn+densenet121, full-res detection", "visual", manifest,
                            {**VISUAL, "detect_max_side": None}, tmp, face_selection=faces))
        rows.append(_text_row(corpus, manifest))
        print(_format_row(rows[-1]), file=sys.stderr)
    return rows, notes


COLUMNS = [("corpus", lambda r: r["corpus"]), ("extractor", lambda r: r["extractor"]),
           ("present/utterances", lambda r: f"{r['present']}/{r['utterances']}"), ("threads", lambda r: f"{r['threads']}"),
           ("seconds", lambda r: f"{r['seconds']:.1f}"), ("CPU seconds", lambda r: f"{r['cpu_seconds']:.1f}"),
           ("utterances/s", lambda r: f"{r['utt_per_s']:.2f}"), ("peak RSS (MB)", lambda r: f"{r['peak_rss_mb']:.0f}")]


def _format_row(row: dict) -> str:
    return markdown_row(row, COLUMNS)


def table(rows: list[dict]) -> str:
    return markdown_table(rows, COLUMNS)


def extrapolation(rows: list[dict], cores: int = 8) -> str:
    """Whole-dataset time on `cores` one-thread jobs (shards run in parallel, one core each), from the
    per-utterance CPU seconds measured (steadier than wall time on a shared machine; model loading is
    included, spread over the bench's few utterances, so this errs high), and the peak RSS each job needs
    (x cores when they all run at once)."""
    head = (f"| dataset | extractor | utterances | CPU s per utterance (measured) | minutes on {cores} cores | "
            f"peak RSS per job (MB) | {cores} jobs at once (GB) |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for dataset, spec in DATASETS.items():
        for row in rows:
            if row["corpus"] != spec["corpus"] or "detect" in row["extractor"]:
                continue
            per = row["cpu_seconds"] / row["utterances"]
            minutes = spec["utterances"] * per / cores / 60
            lines.append(f"| {dataset} | {row['extractor']} | {spec['utterances']} | {per:.3f} | {minutes:.1f} | "
                         f"{row['peak_rss_mb']:.0f} | {row['peak_rss_mb'] * cores / 1024:.1f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ openSMILE scaling

def _threaded(manifest: str, audio_dir: str, threads: int) -> dict:
    """In a fresh process: openSMILE IS10 over the manifest's WAVs with a thread pool (one Smile per thread;
    extract_shard's parallelism before it moved to processes), for comparison."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ercpipe.features import audio

    settings = audio.audio_settings({"feature_set": "IS10"})
    rows = manifest_io.read(manifest)
    report = audio.read_audio_report(Path(audio_dir))
    local = threading.local()

    def one(uid: str, flags: str):
        if not hasattr(local, "worker"):
            local.worker = audio._UtteranceWorker(settings, Path(audio_dir), report, 1582)
        return local.worker(uid, flags)

    start, cpu_start = time.perf_counter(), cpu_seconds()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(one, rows["utterance_id"], rows["flags"]))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cpu_seconds": cpu_seconds() - cpu_start, "peak_rss_mb": peak_rss_mb(),
            "present": sum(v is not None for v, _ in results)}


def run_scaling(tmp: Path, n_utterances: int, repeats: int) -> list[dict]:
    """openSMILE IS10 on IEMOCAP-like WAVs: extract_shard with one worker, with `cores` worker processes
    (threads=cores), and a `cores`-thread pool for comparison, alternated `repeats` times (the machine is
    shared, so the medians are compared)."""
    cores = len(os.sched_getaffinity(0))
    manifest, audio_dir = rfm.make_iemocap_corpus(tmp / "scaling", 1, 30.0, n_utterances, IEMOCAP_UTTERANCE_SECONDS,
                                                  size=(160, 120))
    settings = {"feature_set": "IS10"}
    modes = ["extract_shard, 1 worker", f"extract_shard, {cores} processes", f"thread pool, {cores} threads"]
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(repeats):
        results[modes[0]].append(measure("scaling", "opensmile IS10", "audio", manifest, settings, tmp,
                                         audio_dir=audio_dir))
        results[modes[1]].append(measure("scaling", "opensmile IS10", "audio", manifest, settings, tmp,
                                         threads=cores, audio_dir=audio_dir))
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            row = pool.submit(_threaded, str(manifest), str(audio_dir), cores).result()
        if row["present"] != n_utterances:
            raise SystemExit(f"check failed: the thread pool gave features for {row['present']} of {n_utterances}")
        results[modes[2]].append(row)
    one = float(np.median([r["seconds"] for r in results[modes[0]]]))
    out = []
    for mode, runs in results.items():
        seconds = [r["seconds"] for r in runs]
        median = float(np.median(seconds))
        out.append({"mode": mode, "utterances": n_utterances, "seconds": seconds,
                    "cpu_seconds": [r["cpu_seconds"] for r in runs], "median_s": median,
                    "utt_per_s": n_utterances / median, "speedup": one / median, "cores": cores,
                    "target": 0.9 * cores, "load": os.getloadavg()[0]})
    return out


def scaling_table(rows: list[dict]) -> str:
    head = ("| mode | utterances | seconds (runs) | CPU seconds (runs) | median s | utterances/s | x one worker | "
            "target (0.9 x cores) |\n|---|---|---|---|---|---|---|---|")
    return "\n".join([head] + [
        f"| {r['mode']} | {r['utterances']} | {', '.join(f'{s:.1f}' for s in r['seconds'])} | "
        f"{', '.join(f'{s:.1f}' for s in r['cpu_seconds'])} | {r['median_s']:.1f} | "
        f"{r['utt_per_s']:.1f} | {r['speedup']:.2f} | {r['target']:.1f} |" for r in rows])


# ------------------------------------------------------------------------------------------ visual A/B

def _timed_visual(module_path: str | None, manifest: str, face_selection: dict, out: str) -> dict:
    """In a fresh process, one thread: visual extract_shard (densenet121, random weights) of the visual.py
    at `module_path` (another version of ercpipe/features/visual.py), or of the working tree when None."""
    import importlib.util

    import torch

    from ercpipe.features.interface import ExtractionContext
    from ercpipe.io.features import read

    torch.set_num_threads(1)
    if module_path:
        spec = importlib.util.spec_from_file_location("visual_baseline", module_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["visual_baseline"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    else:
        from ercpipe.features import visual as module
    start, cpu_start = time.perf_counter(), cpu_seconds()
    module.extract_shard(manifest, VISUAL, out, threads=1, device="cpu",
                         context=ExtractionContext(face_selection=face_selection))
    fs = read(out)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu_start,
            "peak_rss_mb": peak_rss_mb(), "present": int(fs.present.sum()), "features": fs.features.tolist()}


def run_visual_ab(tmp: Path, baseline: Path, repeats: int) -> list[dict]:
    """Visual extract_shard of `baseline` (a visual.py file) against the working tree's, alternated in fresh
    processes on three real-format corpora: MELD-like 3-s clips, IEMOCAP-like 4.5-s and 1-s windows."""
    corpora = {
        "MELD-like, 8 clips of 3 s, 1280x720": (
            rfm.make_meld_corpus(tmp / "ab_meld", n_dialogues=2, per_dialogue=4, seconds=MELD_SECONDS),
            {"mode": "largest_central"}),
        "IEMOCAP-like, 12 windows of 4.5 s, 720x480": (
            rfm.make_iemocap_corpus(tmp / "ab_iemocap", 1, 90.0, 12, IEMOCAP_UTTERANCE_SECONDS)[0], rfm.SIDE),
        "IEMOCAP-like, 24 windows of 1 s, 720x480": (
            rfm.make_iemocap_corpus(tmp / "ab_short", 1, 60.0, 24, 1.0)[0], rfm.SIDE)}
    rows = []
    for name, (manifest, rule) in corpora.items():
        runs: dict[str, list[dict]] = {"baseline": [], "working tree": []}
        for _ in range(repeats):
            for version, path in (("baseline", str(baseline)), ("working tree", None)):
                with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                    result = pool.submit(_timed_visual, path, str(manifest), rule, str(tmp / "ab.h5")).result()
                result["load"] = os.getloadavg()[0]
                runs[version].append(result)
                print(f"{name}, {version}: {result['seconds']:.1f} s, {result['cpu_seconds']:.1f} CPU s", file=sys.stderr)
        n = len(manifest_io.read(manifest))
        diff = float(np.abs(np.array(runs["baseline"][0]["features"]) -
                            np.array(runs["working tree"][0]["features"])).max())
        for version, results in runs.items():
            rows.append({"corpus": name, "version": version, "utterances": n,
                         "present": min(r["present"] for r in results),
                         "seconds": [r["seconds"] for r in results], "cpu_seconds": [r["cpu_seconds"] for r in results],
                         "utt_per_cpu_s": n / float(np.median([r["cpu_seconds"] for r in results])),
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
                         "load": [r["load"] for r in results], "max_abs_feature_diff": diff})
    return rows


AB_COLUMNS = [("corpus", lambda r: r["corpus"]), ("version", lambda r: r["version"]),
              ("present/utterances", lambda r: f"{r['present']}/{r['utterances']}"),
              ("wall s (runs)", lambda r: ", ".join(f"{x:.1f}" for x in r["seconds"])),
              ("CPU s (runs)", lambda r: ", ".join(f"{x:.1f}" for x in r["cpu_seconds"])),
              ("utterances per CPU s (median)", lambda r: f"{r['utt_per_cpu_s']:.2f}"),
              ("peak RSS (MB)", lambda r: f"{r['peak_rss_mb']:.0f}"),
              ("load (runs)", lambda r: ", ".join(f"{x:.1f}" for x in r["load"])),
              ("max abs feature diff", lambda r: f"{r['max_abs_feature_diff']:.1e}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["extractors", "scaling", "visual-ab"],
                        help="run one part only (visual-ab: needs --baseline)")
    parser.add_argument("--baseline", type=Path,
                        help="visual-ab: another version of ercpipe/features/visual.py, e.g. from "
                             "`git show HEAD~1:ercpipe/features/visual.py > /tmp/visual_before.py`")
    parser.add_argument("--meld-clips", type=int, default=8)
    parser.add_argument("--iemocap-seconds", type=float, default=180.0)
    parser.add_argument("--iemocap-utterances", type=int, default=8)
    parser.add_argument("--scaling-utterances", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.meld_clips < 1 or (args.meld_clips > 4 and args.meld_clips % 4):
        parser.error(f"--meld-clips {args.meld_clips}: give 1 to 4, or a multiple of 4 (dialogues of 4 clips)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.only == "visual-ab" and (args.baseline is None or not args.baseline.is_file()):
        parser.error("--only visual-ab needs --baseline FILE (a visual.py)")
    out: dict = {"machine": f"{os.cpu_count()} CPUs", "load_before": os.getloadavg()}
    parts = [args.only] if args.only else ["extractors", "scaling"]
    with tempfile.TemporaryDirectory(prefix="bench_real_format_") as tmp:
        if "visual-ab" in parts:
            rows = run_visual_ab(Path(tmp), args.baseline, args.repeats)
            print(markdown_table(rows, AB_COLUMNS))
            out["visual_ab"] = rows
        if "extractors" in parts:
            rows, notes = run_extractors(Path(tmp), args.meld_clips, args.iemocap_seconds, args.iemocap_utterances)
            print("\n".join(notes) + "\n")
            print(table(rows) + "\n")
            print(extrapolation(rows) + "\n")
            out.update(extractors=rows, notes=notes)
        if "scaling" in parts:
            scaling = run_scaling(Path(tmp), args.scaling_utterances, args.repeats)
            print(scaling_table(scaling))
            out["scaling"] = scaling
    out["load_after"] = os.getloadavg()
    print(f"load average before {out['load_before'][0]:.1f}, after {out['load_after'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
