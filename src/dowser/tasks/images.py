"""Images as cheap references until the batch that needs them (issue 17, host memory).

lm-eval builds every request of a task before the first forward, and each request keeps its
doc and its `doc_to_image` result. With decoded images that is ~34 GB for COCO val's 40.5k
images; with encoded bytes in the docs still ~6.5 GB. So the docs lm-eval sees carry no image:
`hooks.load_docs` registers the split's image column here (a memory-mapped Arrow table) and
each doc keeps only `image_ref`, "<source key>#<row>". `doc_to_image` returns an `ImageRef`;
`InMemoryVLM` calls `load_images` per batch, so at most one batch's images are decoded.

    key = register(docs.select_columns(["image"]), "world-gqa/test@/data")
    ref = ImageRef(key, 3); ref.load()            # PIL RGB image
    release()                                     # forget every registered source
"""

from __future__ import annotations

import io
from dataclasses import dataclass

_SOURCES: dict[str, object] = {}  # key -> datasets.Dataset with one undecoded "image" column


def register(images, key: str) -> str:
    """Remember `images` (a Dataset whose "image" column is undecoded) under `key`."""
    _SOURCES[key] = images
    return key


def release() -> None:
    _SOURCES.clear()


@dataclass(frozen=True)
class ImageRef:
    """Row `row` of the image column registered as `source`."""

    source: str
    row: int

    @classmethod
    def parse(cls, ref: str) -> "ImageRef":
        source, _, row = ref.rpartition("#")
        return cls(source, int(row))

    def load(self):
        from PIL import Image

        try:
            images = _SOURCES[self.source]
        except KeyError:
            raise KeyError(f"image source {self.source!r} is not registered (released after its "
                           "evaluation, or docs not read by dowser.tasks.hooks.load_docs)") from None
        cell = images[self.row]["image"]
        if isinstance(cell, dict):  # encoded: {"bytes", "path"}
            cell = Image.open(io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"])
        return cell.convert("RGB")


def load_images(visual) -> list:
    """A request's images, decoded: references are read now, PIL images pass through as RGB."""
    return [v.load() if isinstance(v, ImageRef) else v.convert("RGB") for v in visual]


def image_key(visual) -> str:
    """An identity for a request's images that two tasks over the same split share."""
    if all(isinstance(v, ImageRef) for v in visual):
        return "|".join(f"{v.source}#{v.row}" for v in visual)
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for img in visual:
        h.update(repr((img.mode, img.size)).encode())
        h.update(img.tobytes())
    return h.hexdigest()
