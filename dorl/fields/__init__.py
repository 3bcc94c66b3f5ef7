"""Whole microscope fields: find each white cell in a camera frame, classify it, report the slide.

- `finder`: the white cells of a frame, by their nuclear stain (numpy and Pillow only).
- `crop`: the part of the frame the analyzer sees for one cell, cut like the training crops.
- `analysis`: frames in, one record per white cell out, streaming (`analyze_fields`).
- `records`: those records and their JSON Lines form.
- `run`: a whole run from frame files (`run_fields`): the one call behind `dorl predict --fields` and `dorl fields`.
- `differential`: counts and percentages per type with 95 % Wilson intervals.
- `gallery`, `report`: the review gallery and the slide report (`dorl report`).
- `voc`, `scoring`, `benchmark`, `agreement`: measuring all this on annotated frames.
"""
