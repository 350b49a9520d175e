"""Build hook: generates the gRPC stubs (unitable.v1) from the repository's proto/ at build time.

Nothing generated is committed. `pip install ./python` builds in place, so ../proto is found
next to this directory; an sdist carries a copy of the .proto under proto/ (made by the sdist
command below), so a wheel can also be built from it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.egg_info import egg_info
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTO = Path("unitable") / "v1" / "unitable.proto"


def proto_root() -> Path:
    """The directory holding unitable/v1/unitable.proto: ./proto in an sdist, else ../proto."""
    for root in (HERE / "proto", HERE.parent / "proto"):
        if (root / PROTO).is_file():
            return root
    raise SystemExit(
        f"cannot find {PROTO} under {HERE / 'proto'} or {HERE.parent / 'proto'}: build the "
        "unitable Python package from a checkout of the repository (pip install ./python)"
    )


def generate() -> None:
    """Runs protoc (bundled with grpcio-tools) into unitable/v1: messages, type stubs, gRPC stubs.

    The proto's path is unitable/v1/unitable.proto, so the generated modules are
    unitable.v1.unitable_pb2 and unitable.v1.unitable_pb2_grpc: a subpackage of this package.
    """
    from grpc_tools import protoc  # a build requirement (pyproject.toml)

    root = proto_root()
    out = HERE / "unitable" / "v1"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    include = Path(protoc.__file__).resolve().parent / "_proto"
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={HERE}",
        f"--pyi_out={HERE}",
        f"--grpc_python_out={HERE}",
        str(root / PROTO),
    ])
    if code != 0:
        raise SystemExit(f"protoc failed on {root / PROTO} (exit {code})")
    (out / "__init__.py").write_text(
        '"""gRPC stubs generated from proto/unitable/v1/unitable.proto at build time."""\n')


class BuildPy(build_py):
    def run(self) -> None:
        generate()
        # pip builds in place: drop what an earlier build left, so no stale module is packed.
        shutil.rmtree(Path(self.build_lib) / "unitable", ignore_errors=True)
        super().run()


class EggInfo(egg_info):
    # egg_info (run first by pip, to list the files) needs the generated package to exist.
    def run(self) -> None:
        generate()
        super().run()


class Sdist(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        target = Path(base_dir) / "proto" / PROTO
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proto_root() / PROTO, target)


setup(cmdclass={"build_py": BuildPy, "egg_info": EggInfo, "sdist": Sdist})
