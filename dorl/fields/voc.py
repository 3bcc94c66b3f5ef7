"""Read Pascal VOC annotations (the boxes of annotated microscope fields), with the standard library."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from dorl.errors import ImageError
from dorl.fields.finder import Box


@dataclass(frozen=True)
class VocObject:
    """One annotated object: its class name, its box and whether the frame's edge cuts it."""

    name: str
    box: Box  # 0-based, x1/y1 exclusive (VOC's are 1-based and inclusive)
    truncated: bool


def read_voc(path: str | Path) -> list[VocObject]:
    """The objects of one VOC annotation file.

    Raises:
        ImageError: the file is missing or not a VOC annotation.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ImageError(f"cannot read the VOC annotation {path} ({exc}): give the XML file of the frame.") from exc
    objects = []
    for node in root.iter("object"):
        bndbox = node.find("bndbox")
        if bndbox is None:
            continue
        xmin, ymin, xmax, ymax = (round(float(bndbox.findtext(k, "nan"))) for k in ("xmin", "ymin", "xmax", "ymax"))
        objects.append(VocObject(name=(node.findtext("name") or "").strip(), box=(xmin - 1, ymin - 1, xmax, ymax),
                                 truncated=(node.findtext("truncated") or "0").strip() == "1"))
    return objects


def voc_boxes(path: str | Path, name: str = "WBC") -> list[Box]:
    """The boxes of the objects called `name` in one VOC annotation file."""
    return [o.box for o in read_voc(path) if o.name == name]
