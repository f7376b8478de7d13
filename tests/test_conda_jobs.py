"""`--use-conda`: every rule's script imports ercpipe and its third-party packages inside the rule's env.

Conda's channels cannot be reached here, so an env is emulated by an interpreter that holds exactly what the
env file's `pip:` list installs: a `python -m venv --without-pip` whose site-packages links the listed
distributions and everything they require (their closure, taken from this venv, whose versions the pins
agree with), and nothing else; in particular not this venv's editable ercpipe. Then:

* `import ercpipe` fails in such an interpreter: the env does not carry the library.
* For every rule, every ercpipe module its script can reach (top-level imports and imports inside functions,
  followed through the library) imports in the rule's env with the checkout on sys.path, the way a
  `--use-conda` job gets it (Snakefile). Third-party imports inside functions of those modules must come
  from the env too, except the few listed in LAZY_IMPORTS_NOT_REACHED with the reason the rule never runs them.
* Snakemake itself runs a cheap rule with `--use-conda` against a stand-in `conda` executable that does what
  conda does with an env file (the pip stage replayed as in test_conda_pip_stage.py, then the interpreter
  above) and `source <conda>/bin/activate <env>`: at the default prefix, with `--conda-create-envs-only`,
  and with one `--conda-prefix` outside the project shared by two checkouts; each job must import ercpipe from
  its own checkout, with the env's python and without PYTHONPATH (Snakemake removes it in conda jobs).
"""
from __future__ import annotations

import ast
import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))

# Third-party imports inside functions that a rule's script reaches only through a function the rule never
# calls: (rule, ercpipe module, imported top-level module) -> why. Everything else must be in the rule's env.
LAZY_IMPORTS_NOT_REACHED = {
    ("*", "ercpipe.config", "jsonschema"): "validate_schema() runs in the Snakefile's process only (common.smk)",
    ("*", "ercpipe.features.pickles", "torch"):
        "only a pickle holding torch tensors reaches it, and unpickling such a file needs torch anyway",
    ("mine_anchor_images", "ercpipe.anchors.clip", "open_clip"):
        "mining selects face crops by their visual features; it encodes nothing with CLIP",
    ("mine_anchor_images", "ercpipe.anchors.store", "open_clip"):
        "require_known_clip_model() checks `ercpipe import-anchors --clip-model`; mining never calls it",
    # The same for library modules imported inside a function: the chain is not followed.
    ("encode_anchors", "ercpipe.anchors.mining", "ercpipe.features.visual"):
        "the ercpipe.anchors package imports mining, whose face detection encode_image_set() never calls",
    ("encode_anchors", "ercpipe.anchors.mining", "ercpipe.io.media"):
        "the ercpipe.anchors package imports mining, whose video decoding encode_image_set() never calls",
    **{(rule, "ercpipe.anchors.mining", module): f"the ercpipe.anchors package imports mining, which {rule} never calls"
       for rule in ("import_official_anchors", "export_official_anchors")
       for module in ("ercpipe.features.visual", "ercpipe.io.media")},
}


# ------------------------------------------------------------------------------------------ rules -> envs

def rule_table() -> dict[str, tuple[Path, Path]]:
    """rule -> (env file, script) from the `conda:` and `script:` directives in workflow/rules/*.smk."""
    table = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M):
            name = re.match(r"rule (\w+):", block)
            env = re.search(r'^\s+conda:\s*\n\s*"([^"]+)"', block, flags=re.M)
            script = re.search(r'^\s+script:\s*\n\s*"([^"]+)"', block, flags=re.M)
            if name and script:
                assert env, f"{smk.name}: rule {name.group(1)} has a script but no conda: env"
                table[name.group(1)] = ((smk.parent / env.group(1)).resolve(), (smk.parent / script.group(1)).resolve())
    return table


# ------------------------------------------------------------------------------- the env's interpreter

def pip_list(env_file: Path) -> list[str]:
    deps = yaml.safe_load(env_file.read_text())["dependencies"]
    return [line for d in deps if isinstance(d, dict) for line in d.get("pip", [])]


def env_distributions(env_file: Path) -> dict[str, metadata.Distribution]:
    """The distributions the env's pip list installs: the listed ones and, recursively, what they require."""
    todo = [Requirement(line) for line in pip_list(env_file)]
    found: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, frozenset]] = set()
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        dist = found.get(key[0])
        if dist is None:
            try:
                dist = found[key[0]] = metadata.distribution(req.name)
            except metadata.PackageNotFoundError:
                raise AssertionError(f"{env_file.name}: {req.name} (needed by the env) is not in this venv") from None
        for spec in dist.requires or []:
            sub = Requirement(spec)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in sorted(req.extras) or [""]):
                todo.append(sub)
    return found


def build_env_interpreter(env_file: Path, prefix: Path, record_imports: bool = False) -> Path:
    """A python at `prefix` whose site-packages holds the env file's pip closure and nothing else."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--symlinks", str(prefix)], check=True)
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    for dist in env_distributions(env_file).values():
        origin = Path(dist.locate_file(""))
        for top in sorted({Path(f).parts[0] for f in dist.files or []} - {"..", "__pycache__"}):
            if (origin / top).exists() and not (site / top).exists():
                (site / top).symlink_to(origin / top)
    if record_imports:  # where this interpreter's ercpipe came from, for the Snakemake runs below
        (site / "sitecustomize.py").write_text(textwrap.dedent("""\
            import atexit, json, os, sys

            def _record():
                record = os.environ.get("ERCPIPE_IMPORT_RECORD")
                module = sys.modules.get("ercpipe")
                if record and module is not None:
                    with open(record, "a") as out:
                        out.write(json.dumps({"ercpipe": module.__file__, "prefix": sys.prefix, "argv0": sys.argv[0],
                                              "executable": sys.executable,
                                              "PYTHONPATH": os.environ.get("PYTHONPATH")}) + "\\n")

            atexit.register(_record)
            """))
    return prefix / "bin" / "python"


@pytest.fixture(scope="module")
def env_pythons(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("envs")
    return {f.stem: build_env_interpreter(f, root / f.stem) for f in ENV_FILES}


# ----------------------------------------------------------------------- what a script's imports reach

def _module_file(module: str) -> Path | None:
    path = REPO.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    return handler.type is None or bool(re.search(r"\b(ImportError|ModuleNotFoundError|Exception)\b",
                                                  ast.unparse(handler.type)))


def _registry_module(call: ast.Call) -> str | None:
    """The extractor module a call `extract_shard("text", ...)` / `extractor("text")` of the registry
    ercpipe.features.EXTRACTORS imports (the rule scripts name their modality that way)."""
    from ercpipe.features import EXTRACTORS

    func = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", None)
    if func in ("extract_shard", "extractor") and call.args and isinstance(call.args[0], ast.Constant):
        return EXTRACTORS.get(call.args[0].value)
    return None


def _imports(path: Path, module: str):
    """(imported module, inside a function, inside try/except ImportError) for every import in the file,
    and the extractor module of every registry call with a literal modality."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node, lazy, guarded):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            child_lazy = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Try) and any(_catches_import_error(h) for h in child.handlers):
                for stmt in child.body:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), child_lazy, True)
                for part in [*child.handlers, *child.orelse, *child.finalbody]:
                    yield from visit(ast.Module(body=[part], type_ignores=[]), child_lazy, guarded)
                continue
            if isinstance(child, ast.Call) and _registry_module(child):
                yield _registry_module(child), lazy, guarded
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, lazy, guarded
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*parts, *([child.module] if child.module else [])])
                yield base, lazy, guarded
                for alias in child.names:  # `from ercpipe.x import submodule`
                    if base.startswith("ercpipe") and _module_file(f"{base}.{alias.name}"):
                        yield f"{base}.{alias.name}", lazy, guarded
            yield from visit(child, child_lazy, guarded)

    yield from visit(ast.parse(path.read_text()), False, False)


def reach(script: Path, rule: str = "*"):
    """(ercpipe modules the script can import, with the chain that gets there; third-party imports made
    inside functions of those modules as {(module, top-level name)}; third-party names the script imports)."""
    chains: dict[str, str] = {}
    lazy_third_party: set[tuple[str, str]] = set()
    script_third_party: set[str] = set()
    todo = [(script, "__main__", script.relative_to(REPO).as_posix())]
    while todo:
        path, module, chain = todo.pop(0)  # breadth first: the shortest chain is reported
        for name, lazy, guarded in _imports(path, module):
            top = name.split(".")[0]
            if top == "ercpipe":
                if lazy and ((rule, module, name) in LAZY_IMPORTS_NOT_REACHED
                             or ("*", module, name) in LAZY_IMPORTS_NOT_REACHED):
                    continue
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    sub = ".".join(parts[:i])
                    if sub not in chains and _module_file(sub):
                        chains[sub] = f"{chain} -> {'(in a function) ' if lazy else ''}{sub}"
                        todo.append((_module_file(sub), sub, chains[sub]))
            elif top in sys.stdlib_module_names or top == "__future__" or guarded:
                continue
            elif module == "__main__":
                script_third_party.add(top)
            elif lazy:
                lazy_third_party.add((module, top))
    return chains, lazy_third_party, script_third_party


@lru_cache(maxsize=None)
def env_top_level_names(env_file: Path) -> frozenset[str]:
    dists = set(env_distributions(env_file))
    return frozenset(top for top, owners in metadata.packages_distributions().items()
                     if any(canonicalize_name(o) in dists for o in owners))


_IMPORT_CHECK = """
import importlib, json, sys
sys.path.append(sys.argv[1])  # the checkout, as a --use-conda job gets it (Snakefile); nothing else
failures = {}
for name in json.loads(sys.argv[2]):
    try:
        importlib.import_module(name)
    except Exception as err:
        failures[name] = f"{type(err).__name__}: {err}"
print(json.dumps(failures))
"""


# ------------------------------------------------------------------------------------------------ tests

def test_the_env_interpreter_has_the_env_packages_but_not_the_library(env_pythons, tmp_path):
    python = env_pythons["base"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ok = subprocess.run([str(python), "-c", "import numpy, pandas, h5py, yaml, cv2"], cwd=tmp_path, env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    for module in ("ercpipe", "torch", "snakemake"):
        missing = subprocess.run([str(python), "-c", f"import {module}"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True)
        assert missing.returncode != 0 and "ModuleNotFoundError" in missing.stderr, (
            f"`import {module}` works in the emulated base env: it would not test what the env gives")


def test_every_rule_has_a_script_and_an_env_file():
    table = rule_table()
    assert {"build_manifest", "text_features_shard", "audio_features_shard", "visual_features_shard",
            "encode_anchors", "train_model"} <= set(table)
    for rule, (env_file, script) in table.items():
        assert env_file.is_file() and env_file.parent == REPO / "envs", f"{rule}: {env_file}"
        assert script.is_file(), f"{rule}: {script}"


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.stem)
def test_every_rule_script_imports_inside_its_env(env_file, env_pythons, tmp_path):
    """The modules each script reaches import with the env's packages and the checkout on sys.path."""
    rules = {rule: script for rule, (env, script) in rule_table().items() if env == env_file}
    if not rules:
        pytest.skip(f"no rule uses {env_file.name}")
    wanted: dict[str, list[str]] = {}  # module -> "rule: chain"
    problems = []
    provided = env_top_level_names(env_file)
    for rule, script in sorted(rules.items()):
        chains, lazy_third_party, script_third_party = reach(script, rule)
        for module, chain in chains.items():
            wanted.setdefault(module, []).append(f"{rule}: {chain}")
        for top in sorted(script_third_party - provided):
            problems.append(f"{rule}: {script.name} imports {top}, which {env_file.name} does not install")
        for module, top in sorted(lazy_third_party):
            if top in provided or (rule, module, top) in LAZY_IMPORTS_NOT_REACHED \
                    or ("*", module, top) in LAZY_IMPORTS_NOT_REACHED:
                continue
            problems.append(f"{rule}: {chains[module]} imports {top} in a function; {env_file.name} does not "
                            "install it")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(env_pythons[env_file.stem]), "-c", _IMPORT_CHECK, str(REPO),
                             json.dumps(sorted(wanted) + sorted({t for r in rules.values() for t in reach(r)[2]}))],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for module, error in sorted(json.loads(result.stdout.splitlines()[-1]).items()):
        for where in wanted.get(module, ["(script import)"]):
            problems.append(f"{where}: {error} in the {env_file.stem} env")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ Snakemake --use-conda, end to end

FAKE_CONDA = """#!{python}
# Stand-in for `conda` (tests/test_conda_jobs.py): answers what Snakemake asks and creates an env as conda does.
import json, os, sys
sys.path.insert(0, {tests!r})
args = sys.argv[1:]
with open(os.environ["FAKE_CONDA_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:2] == ["info", "--json"]:
    print(json.dumps({{"conda_prefix": {base!r}, "platform": "linux-64", "conda_version": "25.1.1"}}))
elif args == ["--version"]:
    print("conda 25.1.1")
elif args[:2] == ["config", "--get"]:
    print(json.dumps({{"get": {{"channel_priority": "strict"}}, "rc_path": None}}))
elif args[:1] == ["clean"]:  # after an env is created (Snakemake's default --conda-cleanup-pkgs tarballs)
    pass
elif args[:2] == ["env", "create"]:
    from test_conda_jobs import conda_env_create
    sys.exit(conda_env_create(args[args.index("--file") + 1], args[args.index("--prefix") + 1]))
else:
    sys.exit(f"stand-in conda: {{args}} is not implemented")
"""

# conda's activation, as far as a job sees it: the env's bin/ first on PATH.
FAKE_ACTIVATE = 'export CONDA_PREFIX="$1"\nexport PATH="$1/bin:$PATH"\n'


def conda_env_create(file: str, prefix: str) -> int:
    """`conda env create --file FILE --prefix PREFIX`: the pip stage where conda runs it, then the env."""
    import tempfile

    workdir = os.path.dirname(os.path.abspath(file))
    with tempfile.NamedTemporaryFile("w", prefix="condaenv.", suffix=".requirements.txt", dir=workdir,
                                     delete=False) as requirements:
        requirements.write("\n".join(pip_list(Path(file))))
    # --no-deps: every line is located and fetched from this folder; the full resolution of each env
    # is test_conda_pip_stage.py's.
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-U", "-r", requirements.name,
                          "--exists-action=b", "--dry-run", "--ignore-installed", "--no-deps", "--quiet"],
                         cwd=workdir, capture_output=True, text=True)
    os.remove(requirements.name)
    if pip.returncode != 0:
        print(f"Pip subprocess error:\n{pip.stderr}", file=sys.stderr)
        return 1
    build_env_interpreter(Path(file), Path(prefix), record_imports=True)
    return 0


def _checkout(dest: Path) -> Path:
    """A second copy of the project (its working tree, without data or ignored files)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


# A cheap job (drawn faces, one per class; base env): the demo config with a smaller anchor image set.
TARGET = "anchors/demo_faces/images"


def _small_config(tmp_path: Path) -> Path:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["anchors"]["demo_faces"]["synthetic"]["per_class"] = 1
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    return configfile


@pytest.mark.network  # the stand-in conda replays the pip stage against the package index
def test_use_conda_jobs_import_the_library_of_their_own_checkout(tmp_path):
    conda_base = tmp_path / "conda"
    (conda_base / "bin").mkdir(parents=True)
    conda = conda_base / "bin" / "conda"
    conda.write_text(FAKE_CONDA.format(python=sys.executable, tests=str(TESTS), base=str(conda_base)))
    conda.chmod(0o755)
    (conda_base / "bin" / "activate").write_text(FAKE_ACTIVATE)
    conda_log, record = tmp_path / "conda.log", tmp_path / "imports.jsonl"
    checkouts = {name: _checkout(tmp_path / name / "ercpipe") for name in ("a", "b")}
    configfile = _small_config(tmp_path)
    shared_prefix = tmp_path / "shared" / "conda-envs"  # outside both checkouts
    target = TARGET
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDA") and k != "PYTHONPATH"}
    env.update(PATH=f"{conda_base / 'bin'}{os.pathsep}{env['PATH']}", FAKE_CONDA_LOG=str(conda_log),
               ERCPIPE_IMPORT_RECORD=str(record))

    def run(checkout: str, *args: str) -> tuple[list[list[str]], list[dict]]:
        conda_log.write_text("")
        record.write_text("")
        cmd = [str(Path(sys.executable).with_name("snakemake")), target, "--cores", "1", "--use-conda", *args,
               "--configfile", str(configfile)]
        result = subprocess.run(cmd, cwd=checkouts[checkout], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=600)
        assert result.returncode == 0, f"{' '.join(cmd)} in checkout {checkout}:\n{result.stdout[-5000:]}"
        created = [a for a in map(json.loads, conda_log.read_text().splitlines()) if a[:2] == ["env", "create"]]
        return created, [job for job in map(json.loads, record.read_text().splitlines())
                         if "/.snakemake/scripts/" in job["argv0"]]

    def job_imported_from(checkout: str, jobs: list[dict], env_prefix: Path) -> None:
        assert len(jobs) == 1, jobs
        job = jobs[0]
        assert Path(job["ercpipe"]) == checkouts[checkout] / "ercpipe" / "__init__.py", job
        assert Path(job["prefix"]) == env_prefix, job
        assert job["PYTHONPATH"] is None, job  # removed by Snakemake: the library came the conda-job way
        assert (checkouts[checkout] / target).is_dir()

    # 1. The default prefix, .snakemake/conda/ of the checkout that runs.
    created, jobs = run("a")
    assert len(created) == 1, created
    env_prefix = Path(created[0][created[0].index("--prefix") + 1])
    assert env_prefix.parent == checkouts["a"] / ".snakemake" / "conda"
    job_imported_from("a", jobs, env_prefix)

    # 2. Envs created once, before any job (what a cluster user runs on the login node), in a shared prefix.
    created, jobs = run("b", "--conda-prefix", str(shared_prefix), "--conda-create-envs-only")
    assert len(created) == 1 and not jobs, (created, jobs)
    shared_env = Path(created[0][created[0].index("--prefix") + 1])
    assert shared_env.parent == shared_prefix
    assert not (checkouts["b"] / target).exists()

    # 3. Both checkouts run in that one env; each job imports its own checkout's library.
    created, jobs = run("b", "--conda-prefix", str(shared_prefix))
    assert not created
    job_imported_from("b", jobs, shared_env)
    shutil.rmtree(checkouts["a"] / target)
    created, jobs = run("a", "--conda-prefix", str(shared_prefix))
    assert not created
    job_imported_from("a", jobs, shared_env)


def test_jobs_without_conda_import_the_checkout_library_before_an_installed_one(tmp_path):
    """Without --use-conda a job runs with Snakemake's own interpreter; an ercpipe installed there (another
    version, a plain `pip install .`) must not shadow the checkout's: the Snakefile puts it first on PYTHONPATH."""
    checkout = _checkout(tmp_path / "ercpipe")
    prefix = tmp_path / "interpreter"
    python = build_env_interpreter(REPO / "envs" / "base.yaml", prefix, record_imports=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    (site / "snakemake-venv.pth").write_text(sysconfig.get_path("purelib") + "\n")  # snakemake, as a plain path
    (site / "ercpipe").mkdir()
    (site / "ercpipe" / "__init__.py").write_text('raise ImportError("an installed ercpipe, not the checkout\'s")\n')
    record = tmp_path / "imports.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["ERCPIPE_IMPORT_RECORD"] = str(record)
    cmd = [str(python), "-m", "snakemake", TARGET, "--cores", "1", "--configfile", str(_small_config(tmp_path))]
    result = subprocess.run(cmd, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:]
    jobs = [json.loads(line) for line in record.read_text().splitlines()]
    job = [j for j in jobs if "/.snakemake/scripts/" in j["argv0"]]  # not the Snakemake process itself
    assert len(job) == 1, jobs
    assert Path(job[0]["ercpipe"]) == checkout / "ercpipe" / "__init__.py", job
    assert job[0]["PYTHONPATH"].split(os.pathsep)[0] == str(checkout)
    assert (checkout / TARGET).is_dir()
