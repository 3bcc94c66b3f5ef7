"""Writing each cell's mask as a PNG beside the others, never over an image or an earlier file.

A mask keeps the path of its image below the folder the user gave (`cells/pbc/a.jpg` with
`--save-masks masks` → `masks/pbc/a.png`), so images of the same name in different folders do
not collide. Each file is written atomically (`dorl.safe_write.atomic_file`); an existing file
is replaced only with `overwrite`, and two images of one run that would share a name (`a.jpg`
and `a.png`) get distinct ones.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from dorl.data.scan import ScanEntry
from dorl.runtime.cell_result import CellResult
from dorl.safe_write import OutputError, atomic_file

MASK_SUFFIX = ".png"


class MaskWriter:
    """Writes masks into one folder (checked by the caller with `safe_write.check_output`)."""

    def __init__(self, folder: str | Path, overwrite: bool = False) -> None:
        self.folder = Path(os.path.abspath(folder))
        self.overwrite = overwrite
        self._written: set[str] = set()  # names of this run, only needed when existing files may be replaced
        self.folder.mkdir(parents=True, exist_ok=True)

    def name_for(self, entry: ScanEntry) -> Path:
        """The mask path of an entry, relative to the folder."""
        if entry.root is not None:
            try:
                return entry.path.relative_to(entry.root).with_suffix(MASK_SUFFIX)
            except ValueError:
                pass
        return Path(entry.path.name).with_suffix(MASK_SUFFIX)

    def write(self, result: CellResult, entry: ScanEntry) -> tuple[str | None, str | None]:
        """Write the result's mask; returns (the mask's path, None) or (None, why it was not written)."""
        mask = result.mask
        if mask is None:
            return None, None
        data = _png(mask)
        relative = self.name_for(entry)
        for attempt in range(100):
            candidate = relative if attempt == 0 else relative.with_name(f"{relative.stem}_{attempt + 1}{MASK_SUFFIX}")
            path = self.folder / candidate
            if self.overwrite and str(candidate) in self._written:
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(path, overwrite=self.overwrite) as f:
                    f.write(data)
            except OutputError:
                continue  # an earlier image of this run took the name (the folder was checked empty)
            except OSError as exc:
                return None, f"its mask could not be written to {path} ({exc.strerror or exc})"
            if self.overwrite:
                self._written.add(str(candidate))
            return str(path), None
        return None, f"its mask could not be written: 100 masks of this run already use the name {relative}"


def _png(mask: object) -> bytes:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()
