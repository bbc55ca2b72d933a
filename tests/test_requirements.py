"""requirements.txt, requirements-dev.txt and constraints.txt agree with each other and with the venv."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
NOT_PINNED = {"torch"}  # the machine picks its torch build (CPU, a CUDA wheel, the Space's)
BOUNDED = {"diffusers", "peft", "accelerate", "huggingface-hub"}  # their internals are used


def requirements(name: str) -> list[Requirement]:
    out = []
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


def constraints() -> dict[str, Version]:
    pins = {}
    for req in requirements("constraints.txt"):
        (spec,) = req.specifier
        assert spec.operator == "==", f"constraints.txt: {req} is not an exact pin"
        assert req.marker is not None and req.marker.evaluate({"python_version": "3.11"})
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def test_requirements_take_the_constraints():
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    first = next(line for line in lines if line and not line.startswith("#"))
    assert first == "-c constraints.txt", (
        "requirements.txt must start with `-c constraints.txt` (the Space reads it)"
    )
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()


def test_every_requirement_is_pinned_within_its_range():
    pins = constraints()
    assert not NOT_PINNED & set(pins), "torch must not be pinned: a CUDA machine keeps its own build"
    for req in requirements("requirements.txt") + requirements("requirements-dev.txt"):
        name = canonicalize_name(req.name)
        if name in NOT_PINNED:
            continue
        assert name in pins, f"{req.name} has no exact version in constraints.txt; run `make constraints`"
        assert req.specifier.contains(pins[name]), f"constraints.txt pins {name}=={pins[name]}, outside {req}"


def test_packages_whose_internals_are_used_have_an_upper_bound():
    for req in requirements("requirements.txt"):
        if canonicalize_name(req.name) in BOUNDED:
            uppers = [s for s in req.specifier if s.operator == "<"]
            assert uppers, f"{req.name} needs an upper bound (the studio uses its internals)"
            (upper,) = uppers
            assert Version(upper.version).micro == 0, f"{req}: bound it at the next minor version"


def test_the_installed_versions_are_the_pinned_ones():
    pins = constraints()
    for req in requirements("requirements.txt"):
        name = canonicalize_name(req.name)
        if name in NOT_PINNED:
            continue
        try:
            installed = Version(version(req.name))
        except PackageNotFoundError:
            raise AssertionError(f"{req.name} is not installed: run `make install`") from None
        assert installed == pins[name], (
            f"{req.name} {installed} is installed but constraints.txt pins {pins[name]}: reinstall with "
            "`pip install -c constraints.txt -r requirements.txt`, or after the suite passed on the new "
            "version, `make constraints`"
        )
