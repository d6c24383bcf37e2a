"""Multi-frame plate evidence: a box tracked over frames, registered to sub-pixel accuracy and
fused onto the x4 grid, with provenance and a verdict (docs/fusion.md).

* :mod:`.registration`: NCC coarse shift + ECC (affine / homography) refinement, residuals;
* :mod:`.tracking`: a marked box followed across frames by registration, patches cut for fusion;
* :mod:`.fuse`: shift-and-add and robust (Huber, per-frame weighted) multi-frame super-resolution;
* :mod:`.learned`: the learned refinement of the fusion (``ultrares-fusion-x4``);
* :mod:`.crop`: the whole of it for one box (:func:`.crop.fuse_box`);
* :mod:`.evidence`: the fused crop's provenance, its readable / unreadable verdict, an OCR reading;
* :mod:`.decode`: the frames around a time in a clip, or its first seconds (PyAV);
* :mod:`.codec`: the quantisers the camera's encoder used, block by block, for the verdict;
* :mod:`.clip`: a box of a clip at a time, fused or one frame (``ultrares zoom``, ``POST /api/v1/zoom``);
* :mod:`.history`, :mod:`.live`: a camera's last frames and the zoom into them;
* :mod:`.regions`, :mod:`.auto`: plate-like regions, their tracks, and a fused crop of each (``--auto``);
* :mod:`.synthetic`: synthetic passes of a vehicle for the evaluation, tests and training.
"""
