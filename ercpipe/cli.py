"""`ercpipe` command line: the library's entry points for use without Snakemake.

    ercpipe predict --checkpoint results/.../model.pt --conversation talk.csv [--out predictions.tsv]
    ercpipe predict --checkpoint results/{dataset}/{experiment or selection} [--seed N] --conversation talk.csv
    ercpipe predict --checkpoint results/.../model.pt --manifest features/x/manifest.tsv \
        --features text=features/x/text/minilm.h5 audio=... [--split test]
    ercpipe import-pickle IEMOCAP.pkl --allow-pickle --dataset iemocap_pkl --out-dir features/iemocap_pkl \
        [--valid-standard | --valid-fraction 0.1 --valid-seed 0 | --valid-dialogues ID... | --no-valid]
    ercpipe export-vega --manifest M --features text=T audio=A visual=V --out IEMOCAP.pkl
    ercpipe import-anchors 35_anchor.pt --allow-pickle --classes hap sad neu ang exc fru --clip-model ViT-B-32 --out A.h5
    ercpipe export-anchors anchors/demo_faces/ViT-B-32.h5 --out 35_anchor.pt
    ercpipe check-config my_config.yaml

Errors on bad input (ercpipe.errors.ErcpipeError and the library's other ValueErrors, a missing or
unreadable file) are printed as one line, `ercpipe: error: <message>` naming the file or key and the fix,
with exit status 2 (as argparse does for a bad command line); `ercpipe --debug ...` shows the traceback
instead. Anything else is a bug and keeps its traceback. SIGTERM (`kill`, `timeout`, `scancel`) and Ctrl-C stop
a command with one line and exit status 143 or 130: its temporary files and folders are removed on the way out.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from ercpipe.config import NAME_PATTERN
from ercpipe.errors import ErcpipeError, one_line
from ercpipe.labels import MODALITIES

ALLOW_PICKLE_HINT = "add --allow-pickle"
# Bad input from the user: one line and exit status 2. Other exceptions are bugs and keep their traceback.
USER_ERRORS = (ErcpipeError, ValueError, OSError)  # OSError: a path that is missing, a folder, read-only, full ...


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value!r}")
    return int(value)


def _modality_paths(pairs: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    paths = {}
    for pair in pairs or []:
        modality, sep, path = pair.partition("=")
        if not sep or modality not in MODALITIES or not path:
            parser.error(f"--features takes MODALITY=PATH with MODALITY one of {list(MODALITIES)}; got {pair!r}")
        if modality in paths:
            parser.error(f"--features gives {modality} twice ({paths[modality]} and {path}); give one file per modality")
        paths[modality] = path
    return paths


def _predict(args, parser) -> None:
    if bool(args.conversation) == bool(args.manifest):
        parser.error("give either --conversation (a new conversation) or --manifest with --features")
    # An option of the other mode would be ignored: the user would read predictions made without it.
    given = [flag for flag, value in (("--split", args.split), ("--features", args.features)) if value]
    if args.conversation and given:
        parser.error(f"{' and '.join(given)} {'go' if len(given) > 1 else 'goes'} with --manifest; a --conversation "
                     "is predicted whole, from the features extracted for it")
    if args.manifest and args.work_dir:
        parser.error("--work-dir goes with --conversation (it keeps that conversation's features); with --manifest "
                     "the features are the files given with --features")
    from ercpipe import infer

    if args.conversation:
        frame = infer.predict_conversation(args.checkpoint, args.conversation, args.out, work_dir=args.work_dir,
                                           threads=args.threads, device=args.device, seed=args.seed)
    else:
        features = _modality_paths(args.features, parser)
        frame = infer.predict_features(args.checkpoint, args.manifest, features, args.out,
                                       splits=args.split or None, device=args.device, seed=args.seed)
    if args.out:  # the table is in the file: a whole split printed thousands of lines to the terminal too
        print(f"{len(frame)} utterance(s) predicted{_accuracy_note(frame)}; written to {args.out}")
    else:
        print(infer.format_predictions(frame))


def _accuracy_note(frame) -> str:
    """"; accuracy on the N labelled: x %", per split when the rows come from several (valid chose the epoch, test
    did not: one pooled number mixed them)."""
    labelled = frame[frame["label"] != ""]
    if labelled.empty:
        return ""
    right = labelled["label"] == labelled["prediction"]
    if "split" in labelled and labelled["split"].nunique() > 1:
        return "; accuracy on the labelled: " + ", ".join(
            f"{split} {hits.mean():.1%} ({len(hits)})" for split, hits in right.groupby(labelled["split"], sort=False))
    return f"; accuracy on the {len(labelled)} labelled: {right.mean():.1%}"


def _import_pickle(args, parser) -> None:
    from ercpipe.features.pickles import import_pickle

    out = Path(args.out_dir)
    if not NAME_PATTERN.fullmatch(args.setting):
        parser.error(f"--setting {args.setting!r} becomes a file name (OUT_DIR/MODALITY/SETTING.h5); use letters, "
                     "digits, '_', '-' and '.' only, not starting with '.'")
    features = {m: out / m / f"{args.setting}.h5" for m in args.modalities}
    chosen = [flag for flag, value in (("--valid-standard", args.valid_standard), ("--valid-fraction",
              args.valid_fraction is not None), ("--valid-dialogues", args.valid_dialogues), ("--no-valid",
              args.no_valid)) if value]
    if len(chosen) > 1:
        parser.error(f"give at most one of {', '.join(chosen)}")
    if args.valid_seed is not None and args.valid_fraction is None:
        parser.error("--valid-seed goes with --valid-fraction")
    if args.valid_seed is not None and args.valid_seed < 0:
        parser.error(f"--valid-seed must be a whole number >= 0, got {args.valid_seed}")
    if args.valid_standard:
        valid_split = {"standard": "iemocap"}
    elif args.valid_fraction is not None:
        if not 0 < args.valid_fraction < 1:
            parser.error(f"--valid-fraction must be between 0 and 1, got {args.valid_fraction}")
        valid_split = {"fraction": args.valid_fraction, "seed": args.valid_seed or 0}
    elif args.no_valid:
        valid_split = "none"
    else:
        valid_split = "default"
    summary = import_pickle(args.pickle, out / "manifest.tsv", features, allow_pickle=args.allow_pickle,
                            fmt=args.format, dataset=args.dataset or out.name, how_to_allow=ALLOW_PICKLE_HINT,
                            valid_split=valid_split, valid_dialogues=args.valid_dialogues, classes=args.classes)
    print(json.dumps(summary, indent=2, default=str))


def _export_vega(args, parser) -> None:
    from ercpipe.features.pickles import export_vega

    summary = export_vega(args.manifest, _modality_paths(args.features, parser), args.out, fmt=args.format,
                          valid_as=args.valid_as)
    print(json.dumps(summary, indent=2, default=str))


def _import_anchors(args, parser) -> None:
    from ercpipe.anchors import import_official
    from ercpipe.anchors.store import require_known_clip_model

    require_known_clip_model(args.clip_model)  # before the file is read
    anchors = import_official(args.pt, args.out, args.classes, args.clip_model, allow_pickle=args.allow_pickle,
                              how_to_allow=ALLOW_PICKLE_HINT, pretrained=args.pretrained)
    print(f"{args.out}: {len(anchors.class_names)} classes, {anchors.dim}-d, CLIP {args.clip_model}")


def _pretrained(value: str) -> str | None:
    # A command line has no YAML null: `none` (or `null`) is the random-init CLIP a config writes as null.
    return None if value.strip().lower() in ("none", "null") else value


def _export_anchors(args, parser) -> None:
    from ercpipe.anchors import export_official

    export_official(args.anchors, args.out, classes=args.classes)
    print(f"written {args.out}")


def _check_config(args, parser) -> None:
    from ercpipe.config import check_config_file

    for path in args.files:
        missing = check_config_file(path)
        print(f"{path}: YAML, keys, schema, names and presets are fine (paths and the rest: snakemake -n "
              f"--configfile {path})")
        for problem in missing:  # not an error here: Snakemake merges several --configfile's
            print(f"{path}: not given here, so another --configfile must give it (else snakemake -n refuses): "
                  f"{problem}")


# The commands' input files, as their messages name them.
INPUT_ARGUMENTS = {"checkpoint": "--checkpoint", "conversation": "--conversation", "manifest": "--manifest",
                   "pt": "the input file", "anchors": "the input file"}


def _refuse_out_over_an_input(args, out: str, parser: argparse.ArgumentParser) -> None:
    """--out naming one of the command's own inputs replaced it with the output (a conversation with its
    predictions, a manifest with a pickle); for predict, also a file the workflow wrote in the checkpoint's folder
    (a model.pt, the run's predictions.tsv), which would then no longer be what the workflow made."""
    target = Path(out).resolve()
    inputs = [(label, getattr(args, name)) for name, label in INPUT_ARGUMENTS.items() if getattr(args, name, None)]
    inputs += [("--features", pair.partition("=")[2]) for pair in getattr(args, "features", None) or []]
    for flag, given in inputs:
        if target == Path(given).resolve():
            parser.error(f"--out {out} would replace {flag} {given}; write the output to another file")
    if not getattr(args, "checkpoint", None) or not (target.exists() or target.suffix == ".pt"):
        return
    from ercpipe.infer import InferenceError, checkpoint_files

    checkpoint = Path(args.checkpoint).resolve()
    if (checkpoint.is_dir() and checkpoint in target.parents) or \
            (checkpoint.name == "model.pt" and target.parent == checkpoint.parent):  # a run's seed folder
        parser.error(f"--out {out} would replace a file the workflow wrote beside --checkpoint {args.checkpoint}; "
                     "write the output to another file")
    try:  # a selection's or an ensemble's runs are in its siblings' folders
        runs = {file.resolve().parent for file in checkpoint_files(args.checkpoint, getattr(args, "seed", None))}
    except InferenceError:
        return  # the command says what is wrong with --checkpoint
    run = next((run for run in runs if run == target.parent or run in target.parents), None)
    if run is not None:
        parser.error(f"--out {out} would replace a file of the run {run}, which --checkpoint {args.checkpoint} "
                     "names; write the output to another file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ercpipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", required=True)
    # --debug is also accepted after the command; SUPPRESS keeps the subcommand from resetting it to False.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    p = commands.add_parser("predict", parents=[common], help="per-utterance emotions from a trained checkpoint")
    p.add_argument("--checkpoint", required=True,
                   help="model.pt written by the train_model rule, its seed folder, or an experiment's or selection's "
                        "results folder (results/{dataset}/{name}: its runs' mean class probabilities)")
    p.add_argument("--seed", type=int, help="with a results folder: only the runs of this seed")
    p.add_argument("--conversation", help="CSV/TSV of a new conversation (columns: see ercpipe.infer)")
    p.add_argument("--work-dir", help="keep the conversation's manifest and features here (default: a temp dir)")
    p.add_argument("--manifest", help="a pipeline manifest.tsv whose feature files are given with --features")
    p.add_argument("--features", nargs="+", metavar="MODALITY=PATH", help="feature files, e.g. text=features/...h5")
    p.add_argument("--split", nargs="+", choices=["train", "valid", "test"], help="only these splits (with --manifest)")
    p.add_argument("--out", help="write the predictions (TSV with per-class probabilities)")
    p.add_argument("--threads", type=_positive_int, default=1)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.set_defaults(run=_predict, parser=p)

    p = commands.add_parser("import-pickle", parents=[common],
                            help="community SDT/VEGA feature pickle -> manifest + HDF5 files")
    p.add_argument("pickle")
    p.add_argument("--allow-pickle", action="store_true", help="required: unpickling can run code; trust the file")
    p.add_argument("--out-dir", required=True, help="features/{dataset}: gets manifest.tsv and {modality}/{setting}.h5")
    p.add_argument("--setting", default="pickle", help="file name of the imported settings (default: pickle)")
    p.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    p.add_argument("--format", choices=["iemocap", "meld"], help="default: guessed from the labels")
    p.add_argument("--dataset", help="dataset name in the manifest (default: the folder name)")
    p.add_argument("--classes", nargs="+", help="names of the label ids in order, when not IEMOCAP's or MELD's")
    valid = p.add_argument_group("validation split (the pickles have train and test lists only; default: "
                                 "--valid-standard for IEMOCAP labels, --valid-fraction 0.1 --valid-seed 0 otherwise)")
    valid.add_argument("--valid-standard", action="store_true",
                       help="the 12 validation dialogues of the standard IEMOCAP split")
    valid.add_argument("--valid-fraction", type=float, metavar="F", help="a seeded fraction of the train dialogues")
    valid.add_argument("--valid-seed", type=int, metavar="S", help="seed of --valid-fraction (default 0)")
    valid.add_argument("--valid-dialogues", nargs="+", metavar="ID", help="these train dialogues")
    valid.add_argument("--no-valid", action="store_true",
                       help="no validation split (only train.paper_compat experiments can train on it)")
    p.set_defaults(run=_import_pickle, parser=p)

    p = commands.add_parser("export-vega", parents=[common], help="manifest + HDF5 files -> VEGA's 7-tuple pickle")
    p.add_argument("--manifest", required=True)
    p.add_argument("--features", nargs="+", required=True, metavar="MODALITY=PATH")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["iemocap", "meld"])
    p.add_argument("--valid-as", choices=["train", "drop"], default="train",
                   help="valid dialogues join the train id list (default: the 7-tuple has no valid list) or are "
                        "left out")
    p.set_defaults(run=_export_vega, parser=p)

    p = commands.add_parser("import-anchors", parents=[common], help="official 35_anchor.pt -> ercpipe anchor file")
    p.add_argument("pt")
    p.add_argument("--allow-pickle", action="store_true", help="load a full pickle if weights_only loading fails")
    p.add_argument("--classes", nargs="+", required=True, help="class names in label-id order")
    p.add_argument("--clip-model", required=True, help="open_clip name of the CLIP that made the file (ViT-B-32)")
    p.add_argument("--pretrained", default="openai", type=_pretrained,
                   help="the weights of that CLIP (an open_clip tag or a checkpoint's name; none: random init, as "
                        "the demo's; default: openai)")
    p.add_argument("--out", required=True)
    p.set_defaults(run=_import_anchors, parser=p)

    p = commands.add_parser("export-anchors", parents=[common],
                            help="ercpipe anchor file -> official 35_anchor.pt layout")
    p.add_argument("anchors")
    p.add_argument("--classes", nargs="+", default=None,
                   help="the dataset's classes in label-id order, which the official code indexes the rows by "
                        "(needed for a set shared by datasets; default: every class of the set, in its order)")
    p.add_argument("--out", required=True)
    p.set_defaults(run=_export_anchors, parser=p)

    p = commands.add_parser("check-config", parents=[common],
                            help="a config file's YAML syntax (with its line), repeated keys, schema, names, presets")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(run=_check_config, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    command_parser = args.parser  # its usage line, not the top-level one, goes with a command's errors
    out = getattr(args, "out", None)
    if out and Path(out).is_dir():  # before any work (predict writes at the end)
        command_parser.error(f"--out {out} is a folder; give the path of a file to write")
    if out:
        _refuse_out_over_an_input(args, out, command_parser)
    with StopOnSignals() as stop:
        try:
            args.run(args, command_parser)
        except BaseException as err:
            if stop.received:  # the stop, or what a library made of it: the handler has said it
                return 128 + stop.received
            if args.debug or not isinstance(err, USER_ERRORS):
                raise
            print(f"{parser.prog}: error: {one_line(err)}", file=sys.stderr)
            return 2
    if stop.received:  # it came as the command ended, too late to stop it: its outputs are complete
        return 128 + stop.received
    return 0


class StopOnSignals:
    """While a command runs, SIGTERM (`kill`, `timeout`, `scancel`) raises SystemExit and SIGINT (Ctrl-C)
    KeyboardInterrupt, so that `finally` blocks and context managers clean up, and main() exits with 128 + the
    signal and one line saying so. SIGTERM's default action ends the process where it is: predict's working folder
    (a copy of the user's conversation and its audio) stayed in the temporary folder.

    A handler's exception can be lost: Python drops one raised while a `__del__` or a weakref callback runs
    (printing "Exception ignored"), and PyAV loses one raised while its resampler ends a frame. The command then
    went on, wrote its output and exited 0 (4 of 22 SIGTERMs during predict's audio stage; Ctrl-C likewise in
    predict, export-vega and import-pickle). So the stop is asked again every RETRY_S until the command has ended:
    a repeat that comes while the stop is being handled (a `finally`, an `__exit__` on its way out) leaves that
    cleanup alone; one that comes where nothing handles it raises it again.
    """

    RETRY_S = 0.5
    SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}

    def __init__(self) -> None:
        self.received: int | None = None
        self._raised: list[BaseException] = []  # the stops raised so far (one, unless some were lost)
        self._closed = False

    def __enter__(self) -> StopOnSignals:
        self._previous_handlers = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        # Closed before the handlers go: a pending repeat then sends nothing, and one that comes meanwhile starts
        # no further one; either would find the signal's default action back and end the process after the command
        # returned.
        self._closed = True
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous)
        sys.unraisablehook = self._previous_hook

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            print(f"ercpipe: stopped by {self.SIGNALS[signum]}", file=sys.stderr)
            self.received = signum
        if not self._closed:
            retry = threading.Timer(self.RETRY_S, self._ask_again)
            retry.daemon = True
            retry.start()
        if not self._is_handling_a_stop():
            stop = SystemExit(128 + self.received) if self.received == signal.SIGTERM else KeyboardInterrupt()
            self._raised.append(stop)
            raise stop

    def _ask_again(self) -> None:
        if not self._closed:
            os.kill(os.getpid(), self.received)

    def _is_stop(self, err: BaseException | None) -> bool:
        return any(err is stop for stop in self._raised)

    def _is_handling_a_stop(self) -> bool:
        """Whether the main thread is in a `finally`, `except` or `__exit__` that a stop (or an error raised while
        it was handled) passes through."""
        err = sys.exc_info()[1]
        while err is not None:
            if self._is_stop(err):
                return True
            err = err.__context__
        return False

    def _unraisable(self, unraisable) -> None:
        # A stop dropped by Python is asked again (above); its "Exception ignored" message would only confuse.
        if not self._is_stop(unraisable.exc_value):
            self._previous_hook(unraisable)

if __name__ == "__main__":
    sys.exit(main())
