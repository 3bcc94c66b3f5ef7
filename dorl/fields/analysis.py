"""Field analysis: whole camera frames in, one record per white cell out, frame by frame.

Each frame is decoded, its white cells found (`finder`), each cell cut out the way the training
crops were cut (`crop`), and the crops of consecutive frames are batched through the analyzer.
Records stream out in frame order as soon as every cell of a frame has been classified; at most
one batch of crops and the frames they came from are held at a time, so memory does not grow
with the number of frames. A frame that cannot be read becomes an error record, never the end
of the run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dorl.data.images import ImageSource, describe_source, load_rgb
from dorl.data.scan import ScanEntry
from dorl.errors import ConfigError, ImageError
from dorl.fields.crop import CROP_SCALE, crop_box, cut
from dorl.fields.finder import Box, FinderConfig, FoundCell, find_white_cells
from dorl.fields.records import FieldCell, FrameResult

MAX_FRAME_PIXELS = 40_000_000  # the decoder's limit for one frame, as for a cell image
GREYSCALE = ("the frame is greyscale: white cells are found by the stain's colours, so give the colour frames of "
             "the microscope's camera.")


@dataclass(frozen=True)
class FieldConfig:
    """How frames are turned into cell crops for the analyzer."""

    finder: FinderConfig = field(default_factory=FinderConfig)
    crop_scale: float = field(default=CROP_SCALE, metadata={"help": "crop side / the nucleus box's longer side"})

    def __post_init__(self) -> None:
        if not self.crop_scale > 0:
            raise ConfigError(f"crop_scale must be positive, got {self.crop_scale}.")


@dataclass
class _Pending:
    """A frame whose cells are waiting for the analyzer."""

    frame: FrameResult  # name, index and size (or error); its cells are added when all are classified
    found: list[FoundCell]
    boxes: list[Box]
    crops: list[np.ndarray]
    results: list[Any] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return len(self.results) == len(self.found)


def analyze_fields(frames: Iterable[ImageSource | ScanEntry], analyzer: Any, config: FieldConfig | None = None
                   ) -> Iterator[FrameResult]:
    """Find and classify the white cells of each frame, yielding one `FrameResult` per frame, in order.

    Args:
        frames: frame paths, encoded bytes or RGB arrays (any source `load_rgb` reads), or the entries of
            `dorl.data.scan.scan_images` (one with a problem becomes an error record unread), consumed lazily.
        analyzer: an open `dorl.runtime.analyzer.Analyzer` (anything with `analyze(images)` and
            `batch_size`).
        config: the finder and crop settings.

    Yields:
        One `FrameResult` per frame: its cells (each with box, crop box, edge flag and the
        analyzer's record), no cells, or the error that stopped the frame.
    """
    config = config or FieldConfig()
    batch_size = max(int(getattr(analyzer, "batch_size", 8)), 1)
    pending: deque[_Pending] = deque()
    queued: list[tuple[_Pending, np.ndarray]] = []  # crops not yet given to the analyzer
    for index, source in enumerate(frames):
        item = _prepare(index, source, config)
        pending.append(item)
        queued.extend((item, crop) for crop in item.crops)
        while len(queued) >= batch_size:
            _classify(analyzer, queued[:batch_size])
            del queued[:batch_size]
        yield from _finished(pending)
    if queued:
        _classify(analyzer, queued)
    yield from _finished(pending)


def _prepare(index: int, source: ImageSource | ScanEntry, config: FieldConfig) -> _Pending:
    if isinstance(source, ScanEntry):
        if source.problem is not None:
            return _Pending(FrameResult(str(source.path), index, None, error=source.problem), [], [], [])
        source = source.path
    name = describe_source(source)
    try:
        rgb = load_rgb(source, max_pixels=MAX_FRAME_PIXELS)
    except ImageError as exc:
        return _Pending(FrameResult(name, index, None, error=str(exc)), [], [], [])
    if is_greyscale(rgb):
        return _Pending(FrameResult(name, index, None, error=GREYSCALE), [], [], [])
    size = (rgb.shape[0], rgb.shape[1])
    found = find_white_cells(rgb, config.finder)
    boxes = [crop_box(cell.nucleus_box, size, config.crop_scale) for cell in found]
    return _Pending(FrameResult(name, index, size), found, boxes, [cut(rgb, box) for box in boxes])


def is_greyscale(rgb: np.ndarray) -> bool:
    """Whether the three channels are one (a monochrome camera or a grey image): the finder needs the stain's colours.
    A frame of one value throughout (a black or white frame) is not greyscale: it is empty."""
    same = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    return bool(same and rgb[..., 0].min() != rgb[..., 0].max())


def _classify(analyzer: Any, queued: list[tuple[_Pending, np.ndarray]]) -> None:
    results = analyzer.analyze([crop for _, crop in queued])
    for (item, _), result in zip(queued, results):
        item.results.append(result)


def _finished(pending: deque[_Pending]) -> Iterator[FrameResult]:
    """Pop and yield the frames at the head of the queue whose cells are all classified."""
    while pending and pending[0].done:
        item = pending.popleft()
        frame = item.frame
        cells = [FieldCell(frame=frame.frame, frame_index=frame.index, index=i, found=found, crop_box=box,
                           result=result, crop=crop)
                 for i, (found, box, crop, result) in enumerate(zip(item.found, item.boxes, item.crops, item.results))]
        yield FrameResult(frame.frame, frame.index, frame.size, cells, frame.error)
