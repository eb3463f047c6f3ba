"""Build hook: ship the repository's configs and small demo models inside the package, as privevo/_shipped/.

They stay where the README, the images and the tests name them (configs/, models/); a wheel carries
copies, which privevo.shipped finds, so an installed privevo runs ``privevo run --config tiny`` from
any folder. A tree without them (the images' dependency layer) builds without them; an editable
install reads them from the checkout.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: What a wheel ships, relative to the repository root: every config, and the demo models (about 12 MB).
SHIPPED = ("configs", "models/tiny-unet", "models/fashion-mnist-ddpm", "models/fashion-mnist-classifier")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


class BuildWithShipped(build_py):
    """build_py that also copies SHIPPED into the built package's _shipped folder."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        root = Path(__file__).resolve().parent
        for folder in SHIPPED:
            source = root / folder
            if source.is_dir():
                shutil.copytree(source, Path(self.build_lib) / "privevo" / "_shipped" / folder, ignore=IGNORED,
                                dirs_exist_ok=True)
            else:
                self.warn(f"{folder} is not in this tree: the package is built without it")


setup(cmdclass={"build_py": BuildWithShipped})
