"""Evaluation against the super-resolution papers' protocol.

* :mod:`.metrics`: PSNR / SSIM on the BT.601 Y channel (MATLAB-compatible), sharpness;
* :mod:`.matlab_resize`: MATLAB-compatible bicubic ``imresize`` (antialiased when shrinking);
* :mod:`.datasets`: (name, LR, HR) pairs from Set5/Set14-style folders and from traffic video
  (down-scaled, H.264 re-encoded at a camera bitrate);
* :mod:`.evaluate`: score an upscaler vs bicubic, CSV / Markdown tables (``ultrares eval``).
"""
