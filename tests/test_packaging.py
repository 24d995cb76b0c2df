"""What a normal (non-editable) install gets: built as a real wheel and read back."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference" / "wan2.2-s2v-14b"
PACKAGED_REFERENCE = REPO / "avatardoctor" / "data" / "reference" / "wan2.2-s2v-14b"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("avatardoctor-*.whl")
    return zipfile.ZipFile(path)


def test_runner_and_reports_install_under_avatardoctor(wheel):
    names = set(wheel.namelist())
    assert "avatardoctor/runner/__init__.py" in names
    assert "avatardoctor/reports/__init__.py" in names
    assert not any(n.startswith(("runner/", "reports/")) for n in names)  # no generic top-level modules


def test_a_normal_install_imports_avatardoctor_runner(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), wheel.filename],
        check=True,
        capture_output=True,
        timeout=300,
    )
    code = "import avatardoctor.runner, avatardoctor.reports; print(avatardoctor.runner.__file__)"
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # from the installed copy, not the checkout's runner/ (the editable finder would give that)
    assert r.stdout.strip() == str(target / "avatardoctor" / "runner" / "__init__.py")


def test_report_templates_ship_with_the_reports_package(wheel):
    names = set(wheel.namelist())
    for template in ("base.html.j2", "report.html.j2", "compare.html.j2"):
        assert f"avatardoctor/reports/{template}" in names


def test_reference_tensor_lists_ship_as_package_data(wheel):
    names = set(wheel.namelist())
    for f in (
        "dit.tensors.json",
        "t5.tensors.json",
        "vae.tensors.json",
        "diffusion_pytorch_model.safetensors.index.json",
    ):
        assert f"avatardoctor/data/reference/wan2.2-s2v-14b/{f}" in names


def test_metadata_dependencies_and_entry_point(wheel):
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    text = wheel.read(meta).decode()
    requires = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    names = {r.split(";")[0].split(">")[0].split("=")[0].strip() for r in requires}
    assert {"click", "rich", "psutil", "nvidia-ml-py", "safetensors", "pandas", "matplotlib"} <= names
    assert "pynvml" not in names  # the deprecated wrapper, not the maintained binding
    assert any(r.startswith("torch") and 'extra == "torch"' in r for r in requires)
    entry = wheel.read(next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))).decode()
    assert "avatardoctor = avatardoctor.cli:main" in entry


@pytest.mark.skipif(not SHARED_REFERENCE.is_dir(), reason="../shared/reference is not beside this checkout")
def test_packaged_reference_is_the_shared_one():
    for f in SHARED_REFERENCE.iterdir():
        assert filecmp.cmp(f, PACKAGED_REFERENCE / f.name, shallow=False), f.name


def test_a_plain_checkout_imports_runner_and_reports_from_itself(tmp_path):
    """No install at all (python -S: no site-packages, no editable finder): avatardoctor/runner and
    avatardoctor/reports are links to the top-level runner/ and reports/, so the checkout imports them."""
    for part in ("avatardoctor", "runner", "reports"):
        shutil.copytree(REPO / part, tmp_path / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import avatardoctor.runner, avatardoctor.reports; "
        "print(avatardoctor.runner.__file__); print(avatardoctor.reports.__file__)"
    )
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [
        str(tmp_path / "avatardoctor" / "runner" / "__init__.py"),
        str(tmp_path / "avatardoctor" / "reports" / "__init__.py"),
    ]
    assert (tmp_path / "avatardoctor" / "runner").resolve() == (tmp_path / "runner").resolve()


def test_the_json_schemas_ship_as_package_data(wheel):
    """Every schema in the checkout is in the wheel, and each names itself as its file does."""
    import json

    shipped = {
        n.removeprefix("avatardoctor/schemas/") for n in wheel.namelist() if n.startswith("avatardoctor/schemas/")
    }
    in_checkout = {p.name for p in (REPO / "avatardoctor" / "schemas").glob("*.schema.json")}
    assert len(in_checkout) >= 14 and shipped == in_checkout
    for name in shipped:
        schema = json.loads(wheel.read(f"avatardoctor/schemas/{name}"))
        assert schema["title"] == f"avatardoctor.{name.removesuffix('.schema.json')}/1"


def _third_party_imports() -> set[str]:
    """Top-level modules the package's code imports that are neither the standard library nor avatardoctor."""
    import ast

    found = set()
    for root in ("avatardoctor", "runner", "reports"):  # avatardoctor/runner and /reports are links to these
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "avatardoctor"}


def test_every_third_party_import_is_a_declared_dependency_and_every_dependency_is_imported():
    import configparser
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines() + cfg["options.extras_require"]["torch"].splitlines()
    declared = {
        canonicalize_name(Requirement(line).name) for line in lines if line.strip() and not line.startswith("#")
    }
    providers = importlib.metadata.packages_distributions()
    # a module not installed here (tomli on Python 3.11+) is named as its distribution is
    imported = {canonicalize_name(providers.get(m, [m])[0]) for m in _third_party_imports()}
    assert imported - declared == set(), "imported but not in install_requires"
    assert declared - imported == set(), "declared but never imported"


def test_the_license_file_is_the_apache_license_setup_cfg_names_and_ships_in_the_wheel(wheel):
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    meta = cfg["metadata"]
    assert meta["license"] == "Apache-2.0" and meta["author"] == "avatardoctor developers"
    assert "https://github.com/Alibaba-Quark/LiveAvatar" in meta["project_urls"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in wheel.namelist())
