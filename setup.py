"""Map the top-level folders onto one import namespace: operator/ is infleet.operator, and so on."""

from pathlib import Path

from setuptools import setup

PARTS = ("operator", "runtime", "autoscaler", "gateway", "cluster", "monitoring")
root = Path(__file__).parent
packages = ["infleet"] + [f"infleet.{p.parent.name}" for p in sorted((root / "infleet").glob("*/__init__.py"))]
package_dir = {"infleet": "infleet"}
for part in PARTS:
    package_dir[f"infleet.{part}"] = part
    packages += [
        "infleet." + ".".join(p.parent.relative_to(root).parts)
        for p in sorted((root / part).rglob("__init__.py"))
        if "__pycache__" not in p.parts
    ]
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"": ["*.yaml", "*.json", "*.txt", "*.jinja", "*.c", "*.h"]},
)
