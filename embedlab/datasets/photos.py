"""Photos that ship inside installable packages (the sample photos bundled with scikit-image and scikit-learn),
addressed by `pkg:` URIs.

`pkg:skimage/<name>` loads `skimage.data.<name>()` (stereo_motorcycle gives its left view),
`pkg:sklearn/<file>` loads one of scikit-learn's sample images. Debian wallpaper photos are used when
installed (never required): `deb:<absolute path>`.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np

from embedlab.errors import ManifestError


@dataclass(frozen=True)
class PackagePhoto:
    uri: str
    license: str
    source: str
    objects: tuple[str, ...]  # object tags for the demo caption grammar
    scene: str  # a short description for reports


SKIMAGE_PHOTOS = {
    "astronaut": PackagePhoto(
        "pkg:skimage/astronaut",
        "public domain (NASA)",
        "scikit-image",
        ("astronaut", "person", "flag"),
        "portrait of an astronaut with a flag",
    ),
    "chelsea": PackagePhoto(
        "pkg:skimage/chelsea", "CC0 (Stefan van der Walt)", "scikit-image", ("cat",), "a tabby cat"
    ),
    "coffee": PackagePhoto(
        "pkg:skimage/coffee", "CC0 (Rachel Michetti)", "scikit-image", ("coffee", "cup"), "a cup of coffee on a saucer"
    ),
    "rocket": PackagePhoto(
        "pkg:skimage/rocket", "public domain (SpaceX)", "scikit-image", ("rocket",), "a rocket launch at night"
    ),
    "motorcycle": PackagePhoto(
        "pkg:skimage/motorcycle",
        "Middlebury stereo set (no license stated)",
        "scikit-image",
        ("motorcycle",),
        "a motorcycle in a workshop",
    ),
}
SKLEARN_PHOTOS = {
    "china.jpg": PackagePhoto(
        "pkg:sklearn/china.jpg",
        "CC-BY 2.0",
        "scikit-learn",
        ("temple", "tree"),
        "a Chinese temple among trees under a bright sky",
    ),
    "flower.jpg": PackagePhoto(
        "pkg:sklearn/flower.jpg", "CC-BY 2.0", "scikit-learn", ("flower",), "a flower against a dark background"
    ),
}
# Grayscale photos of scikit-image (loaded as three equal channels): more independent scenes for the demo (each photo
# is one group of its group-aware test), none in package_photos() (whose users expect the seven colour photos).
GRAY_PHOTOS = {
    name: PackagePhoto(f"pkg:skimage/{name}", lic, "scikit-image", objects, scene)
    for name, lic, objects, scene in (
        ("camera", "CC0 (Lav Varshney)", ("man", "camera"), "a man with a camera on a tripod"),
        ("moon", "no license stated (scikit-image)", ("moon",), "the surface of the moon"),
        ("coins", "no known copyright restrictions (Brooklyn Museum)", ("coins",), "old coins on a table"),
        ("grass", "CC0 (DeviantArt linolafett)", ("grass",), "a patch of grass"),
        ("gravel", "CC0 (CC0Textures)", ("gravel",), "gravel on the ground"),
        ("brick", "CC0 (CC0Textures)", ("brick", "wall"), "a brick wall"),
        ("clock", "public domain (Stefan van der Walt)", ("clock",), "a wall clock, motion-blurred"),
        ("text", "public domain (Wikipedia)", ("text",), "printed text photographed at an angle"),
    )
}
DEBIAN_GLOBS = ("/usr/share/backgrounds/*.jpg", "/usr/share/backgrounds/mate/nature/*.jpg")


def package_photos() -> list[PackagePhoto]:
    """The seven colour photos shipped inside scikit-image and scikit-learn (always available)."""
    return list(SKIMAGE_PHOTOS.values()) + list(SKLEARN_PHOTOS.values())


def demo_photos() -> list[PackagePhoto]:
    """The package photos and the grayscale ones (GRAY_PHOTOS): the demo's scenes, one group each."""
    return package_photos() + list(GRAY_PHOTOS.values())


def debian_photos() -> list[str]:
    """Absolute paths of installed Debian wallpaper photos (empty when none are installed)."""
    found: list[str] = []
    for pattern in DEBIAN_GLOBS:
        found.extend(sorted(p for p in glob.glob(pattern) if "umang" not in os.path.basename(p)))
    return found


def load_photo(uri: str) -> np.ndarray:
    """Load a `pkg:` photo as an HxWx3 uint8 RGB array."""
    if not uri.startswith("pkg:"):
        raise ManifestError(f"{uri!r} is not a package photo URI (expected pkg:skimage/<name> or pkg:sklearn/<file>)")
    lib, _, name = uri[4:].partition("/")
    if lib == "skimage" and (name in SKIMAGE_PHOTOS or name in GRAY_PHOTOS):
        import skimage.data

        if name == "motorcycle":
            arr = skimage.data.stereo_motorcycle()[0]
        else:
            arr = getattr(skimage.data, name)()
    elif lib == "sklearn" and name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(name)
    else:
        choices = [p.uri for p in demo_photos()]
        raise ManifestError(f"Unknown package photo {uri!r}. Available: {', '.join(choices)}")
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    return np.ascontiguousarray(arr[..., :3].astype(np.uint8))
